"""Agents used by the benchmarks (the same entrypoint runs under lksup and livekit-agents)."""
