"""Agent modules and the SDK worker of the fleet-scale benchmark (bench/fleet.py)."""
