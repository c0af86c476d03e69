"""I/O shells around the pure protocol machine.

A WebSocket client over anyio streams, and the session that drives one agent's connection
(reconnects, keepalive, offers, jobs).
"""
