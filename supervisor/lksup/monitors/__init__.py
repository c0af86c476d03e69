"""Shared monitors: one CPU sampler and one memory sweep for every agent (DESIGN.md §3.5).

Modules, pure ones marked:

- ``memory_policy`` (pure): per-process warn/limit decisions and the fleet memory budget.
- ``load`` (pure): an agent's load from the shared signals, ``is_full``, the CPU moving average.
- ``events`` (pure): what the monitor reports (``MemoryWarning``, ``MemoryLimitExceeded``,
  ``BudgetChanged``).
- ``cgroup``: cgroup v1/v2 CPU and memory limits and usage.
- ``sampling``: psutil memory sweeps, CPU and memory-share readers.
- ``monitor``: the ``Monitor`` service that runs them all on one schedule.

This package imports nothing itself, so the pure modules stay importable without psutil or
anyio.
"""
