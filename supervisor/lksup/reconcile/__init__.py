"""Reconciliation: from a desired fleet and the current one to a plan of per-agent actions."""
