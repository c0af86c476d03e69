from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lksup.daemon import state
from lksup.fleet.loading import load_fleet
from lksup.fleet.schema import Fleet, LiteralSecret


def _fleet(tmp_path: Path, threshold: float = 0.7) -> Fleet:
    path = tmp_path / "f.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: s}\n"
        "livekit: {url: 'wss://lk.example.com', api_key: k, api_secret: literal-secret-value}\n"
        f"agents:\n  a: {{entrypoint: 'm:f', load_threshold: {threshold}}}\n"
    )
    return load_fleet(str(path), environ={}).fleet


def test_applied_fleet_round_trips_privately(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    state_dir = tmp_path / "state"
    applied = state.save(state_dir, fleet, source="fleets/prod.yaml")
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / state.STATE_FILE).stat().st_mode) == 0o600
    assert [p.name for p in state_dir.iterdir()] == [state.STATE_FILE]  # no temporary left
    loaded = state.load(state_dir)
    assert loaded is not None
    assert loaded.fleet == fleet
    assert loaded.revision == applied.revision == state.revision(fleet)
    assert loaded.source == "fleets/prod.yaml"
    secret = loaded.fleet.agents["a"].livekit.api_secret
    assert isinstance(secret, LiteralSecret)
    assert secret.value == "literal-secret-value"  # the daemon needs it; the file is 0600


def test_revision_follows_content(tmp_path: Path) -> None:
    assert state.revision(_fleet(tmp_path)) == state.revision(_fleet(tmp_path))
    assert state.revision(_fleet(tmp_path)) != state.revision(_fleet(tmp_path, 0.5))


def test_nothing_applied_yet_and_corrupt_state(tmp_path: Path) -> None:
    assert state.load(tmp_path / "none") is None
    (tmp_path / state.STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the applied fleet"):
        state.load(tmp_path)


def test_default_state_dir() -> None:
    assert state.default_state_dir({"LKSUP_STATE_DIR": "/x"}, 1000) == Path("/x")
    assert state.default_state_dir({}, 0) == Path("/var/lib/lksup")
    assert state.default_state_dir({"XDG_STATE_HOME": "/s"}, 1000) == Path("/s/lksup")
