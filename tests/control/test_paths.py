from __future__ import annotations

from pathlib import Path

import pytest

from lksup.control.errors import SocketPathError
from lksup.control.paths import resolve_socket_path

ENV = {"LKSUP_SOCKET": "/env/lksup.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}


def test_explicit_wins_over_everything() -> None:
    assert resolve_socket_path("/x/s.sock", environ=ENV, uid=0) == Path("/x/s.sock")


def test_env_var_wins_over_defaults() -> None:
    assert resolve_socket_path(None, environ=ENV, uid=0) == Path("/env/lksup.sock")


def test_root_uses_run() -> None:
    environ = {"XDG_RUNTIME_DIR": "/run/user/0"}
    assert resolve_socket_path(None, environ=environ, uid=0) == Path("/run/lksup/lksup.sock")


def test_user_uses_xdg_runtime_dir() -> None:
    environ = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    path = resolve_socket_path(None, environ=environ, uid=1000)
    assert path == Path("/run/user/1000/lksup/lksup.sock")


def test_empty_values_count_as_unset() -> None:
    environ = {"LKSUP_SOCKET": "", "XDG_RUNTIME_DIR": "/run/user/1000"}
    path = resolve_socket_path("", environ=environ, uid=1000)
    assert path == Path("/run/user/1000/lksup/lksup.sock")


def test_user_without_xdg_runtime_dir_is_an_error_not_tmp() -> None:
    with pytest.raises(SocketPathError, match="XDG_RUNTIME_DIR is not set") as info:
        resolve_socket_path(None, environ={}, uid=1000)
    assert "--socket" in str(info.value)
    assert "LKSUP_SOCKET" in str(info.value)
