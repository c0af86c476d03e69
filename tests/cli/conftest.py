from __future__ import annotations

from tests.control.conftest import mute_socket, sock_dir, socket_path

__all__ = ["mute_socket", "sock_dir", "socket_path"]  # short socket paths, as in tests/control
