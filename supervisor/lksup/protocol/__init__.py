"""The LiveKit agent worker protocol, client side: events, codec, state machine, backoff.

Everything here is pure (no sockets, no clocks): the machine takes bytes and an explicit
``now`` and returns frames to send, events, commands for its shell and its next deadline.
Protobuf appears only in ``codec``.
"""
