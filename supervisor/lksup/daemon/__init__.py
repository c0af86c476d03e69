"""The supervisor daemon: agents built from the fleet, shared monitors, reconcile and drain."""
