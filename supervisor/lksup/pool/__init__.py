"""Job processes, parent side: one process handle per job process, and a warm pool per agent.

The supervisor never imports user code: it talks to ``python -m lksup.jobs.child`` processes
over socketpairs with the messages of ``lksup.jobs.ipc``.
"""
