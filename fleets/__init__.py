"""Example fleets and their agents (importable as ``fleets.agents.*`` from the repository root)."""
