"""Job processes, child side: the runtime that runs an agent's code, and the API it sees.

The supervisor never imports user code (DESIGN.md §3.1). Each job process is a fresh
interpreter started as ``python -m lksup.jobs.child --ipc-fd N`` in its own session, talking to
the supervisor over one end of a socketpair with length-prefixed frames (``framing``) of
schema-defined messages (``ipc``). The parent-side pool lives in ``lksup.pool`` and imports
only ``framing`` and ``ipc`` from here.

Modules:

* ``framing``  (pure) length-prefixed frames, ``FrameDecoder``
* ``ipc``      (pure) message dataclasses, ``encode``/``decode``, ``ExitCode``
* ``context``  the agent author's API: ``JobProcess``, ``JobRequest``, ``JobContext``
* ``loader``   import ``module:attribute`` references, describe failures
* ``channel``  the outbound side of the socket: writer thread, log forwarding, EOF watchdog
* ``runner``   one job's lifecycle: entrypoint, shutdown, grace, callbacks
* ``runtime``  the child's event loop: dispatch of parent messages, offers, signals, EOF
* ``child``    the process entry point (``python -m lksup.jobs.child``)
"""
