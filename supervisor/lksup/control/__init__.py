"""The control plane: the daemon's owner-only HTTP/1.1 API on a Unix socket, and its client.

* ``paths`` (pure): which socket path to use (``--socket`` > ``$LKSUP_SOCKET`` > root's
  ``/run/lksup`` > ``$XDG_RUNTIME_DIR/lksup``).
* ``api`` (pure): request/response models, the route table, and ``ControlApp``, the protocol
  the daemon implements.
* ``errors`` (pure): ``ControlError``, ``DaemonUnreachable``, ``AlreadyRunning``, ...
* ``server``: ``ControlServer``, h11 on anyio; owns the socket file.
* ``client``: ``ControlClient``/``SyncControlClient`` over httpx.

Importing this package loads neither the server nor the client.
"""
