"""The re-apply path (SIGHUP, ``--watch``) on a fake daemon app and a fake checker: no
processes, no supervisor. The real checker and the real app are covered end to end
(tests/e2e/test_daemon_operations.py: sighup, watch)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from lksup.control.api import ApplyRequest
from lksup.daemon import reapply
from lksup.daemon.reapply import Reapplier
from lksup.errors import LksupError

pytestmark = pytest.mark.anyio

FLEET = "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: t}\nagents:\n  a: {entrypoint: m:e}\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeSupervisor:
    stopping: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)

    def change_event(self) -> anyio.Event:
        return self.changed

    def notify(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()


@dataclass
class FakeApp:
    """The parts of ``DaemonApp`` a re-apply uses; records what it was asked."""

    source: str | None
    values: dict[str, Any] = field(default_factory=lambda: {"x": 1})
    revision: str | None = "r1"
    supervisor: FakeSupervisor = field(default_factory=FakeSupervisor)
    watching: bool = False
    refuse: Exception | None = None
    applied: list[ApplyRequest] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def apply(self, request: ApplyRequest) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.applied.append(request)
        self.changed.set()
        return {"summary": {"update-in-place": 1}, "secretsChanged": ["a"]}

    def reapply_failed(self, reason: str) -> None:
        self.failures.append(reason)
        self.changed.set()


class FakeChecker:
    """Says what ``problems`` says; counts its calls; can be held until released."""

    def __init__(self, problems: str | None = None) -> None:
        self.problems = problems
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.hold: anyio.Event | None = None
        self.entered = anyio.Event()
        self.during: Any = None  # called while checking (an apply landing meanwhile)

    async def __call__(self, source: str, values: dict[str, Any]) -> str | None:
        self.calls.append((source, values))
        self.entered.set()
        if self.during is not None:
            self.during()
        if self.hold is not None:
            await self.hold.wait()
        return self.problems


def _fleet(tmp_path: Path, text: str = FLEET) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return str(path)


def _reapplier(checker: FakeChecker, **kwargs: Any) -> Reapplier:
    return Reapplier(check=checker, environ={}, **kwargs)


async def test_a_passing_file_is_applied_with_its_values_unchecked_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    app, checker = FakeApp(_fleet(tmp_path)), FakeChecker()
    await _reapplier(checker).reapply(app, "SIGHUP")
    assert checker.calls == [(app.source, {"x": 1})]
    (request,) = app.applied
    assert (request.source, request.values, request.check) == (app.source, {"x": 1}, False)
    assert request.fleet["metadata"]["name"] == "t"
    assert app.failures == []
    assert f"SIGHUP: re-applied {app.source} (" in caplog.text
    assert "1 to update in place" in caplog.text
    assert "replaced for a changed secret: a" in caplog.text


@pytest.mark.parametrize(
    ("app_changes", "said"),
    [
        ({"source": None}, "SIGHUP: no fleet file to re-apply"),
        ({"supervisor": FakeSupervisor(stopping=True)}, "SIGHUP: ignored while shutting down"),
    ],
)
async def test_nothing_to_do_is_said_and_checks_nothing(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    app_changes: dict[str, Any],
    said: str,
) -> None:
    app, checker = FakeApp(_fleet(tmp_path)), FakeChecker()
    for name, value in app_changes.items():
        setattr(app, name, value)
    await _reapplier(checker).reapply(app, "SIGHUP")
    assert said in caplog.text
    assert checker.calls == []
    assert app.applied == []
    assert app.failures == []


async def test_failed_checks_change_nothing_and_status_gets_the_first_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = FakeApp(_fleet(tmp_path))
    await _reapplier(FakeChecker("fleet.yaml:5: cannot import m\nmore")).reapply(app, "watch")
    assert app.applied == []
    assert app.failures == [
        f"watch: {app.source} does not pass its checks: fleet.yaml:5: cannot import m"
    ]
    assert "nothing changed:\nfleet.yaml:5: cannot import m\nmore" in caplog.text


async def test_an_apply_during_the_checks_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, checker = FakeApp(_fleet(tmp_path)), FakeChecker()
    checker.during = lambda: setattr(app, "revision", "r2")
    await _reapplier(checker).reapply(app, "SIGHUP")
    assert app.applied == []
    assert app.failures == []
    assert "superseded by an apply during its checks" in caplog.text


async def test_a_file_invalid_after_its_checks_changes_nothing(tmp_path: Path) -> None:
    app = FakeApp(_fleet(tmp_path, FLEET + "unknown_key: 1\n"))
    await _reapplier(FakeChecker()).reapply(app, "SIGHUP")
    assert app.applied == []
    (failure,) = app.failures
    assert failure.startswith(f"SIGHUP: {app.source} is invalid: ")


async def test_a_refused_apply_changes_nothing(tmp_path: Path) -> None:
    app = FakeApp(_fleet(tmp_path), refuse=LksupError("this fleet removes every agent"))
    await _reapplier(FakeChecker()).reapply(app, "SIGHUP")
    assert app.failures == [f"SIGHUP: {app.source} was not applied: this fleet removes every agent"]


async def test_one_at_a_time_a_failure_of_any_kind_is_kept_and_a_stop_cancels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, checker = FakeApp(_fleet(tmp_path)), FakeChecker()
    checker.hold = anyio.Event()
    reapplier = _reapplier(checker)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            reapplier.request(tg, app)
            await checker.entered.wait()
            assert reapplier.running
            reapplier.request(tg, app)  # a second SIGHUP meanwhile
            assert "SIGHUP: a re-apply is already running; ignored" in caplog.text
            assert len(checker.calls) == 1
            reapplier.cancel()  # a stop signal
        assert not reapplier.running
        assert app.applied == []
        assert app.failures == []

        async def broken(source: str, values: dict[str, Any]) -> str | None:
            raise RuntimeError("boom")

        reapplier.check = broken
        async with anyio.create_task_group() as tg:
            reapplier.request(tg, app)
        assert app.failures == ["SIGHUP: the re-apply failed: RuntimeError: boom"]
        assert not reapplier.running


async def test_watch_applies_a_change_once_it_holds_still_and_not_a_failed_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    wanted: tuple[int, anyio.Event] | None = None  # set once the file was read that often
    original = reapply.read_quietly

    async def counted(path: str) -> bytes | str:
        nonlocal reads
        content = await original(path)
        reads += 1
        if wanted is not None and reads >= wanted[0]:
            wanted[1].set()
        return content

    monkeypatch.setattr(reapply, "read_quietly", counted)
    source = _fleet(tmp_path)
    app, checker = FakeApp(source), FakeChecker()
    reapplier = _reapplier(checker, watch_interval=0.01, watch_debounce=0.01)
    reapplier.watched[source] = Path(source).read_bytes()  # as applied at start
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reapplier.watch, app)
            Path(source).write_text(FLEET.replace("m:e", "m:f"))
            await app.changed.wait()
            (request,) = app.applied
            assert request.fleet["agents"]["a"]["entrypoint"] == "m:f"
            assert app.watching

            app.changed = anyio.Event()
            checker.problems = "broken"
            Path(source).write_text(FLEET.replace("m:e", "m:g"))
            await app.changed.wait()
            assert app.failures == [f"watch: {source} does not pass its checks: broken"]
            calls = len(checker.calls)
            wanted = (reads + 1, anyio.Event())
            Path(source).write_text(FLEET.replace("m:e", "m:g"))  # the same broken content
            await wanted[1].wait()  # the watcher reads the failed content again...
            assert len(checker.calls) == calls  # ...and does not try it again
            app.changed = anyio.Event()
            checker.problems = None
            Path(source).write_text(FLEET.replace("m:e", "m:h"))
            await app.changed.wait()
            assert len(checker.calls) == calls + 1
            assert app.applied[-1].fleet["agents"]["a"]["entrypoint"] == "m:h"
            tg.cancel_scope.cancel()


async def test_watch_follows_a_configmap_update_and_an_apply_of_another_file(
    tmp_path: Path,
) -> None:
    """A ConfigMap update swaps the ``..data`` link in the file's folder (the file itself is
    a link that never changes); an ``lksup apply`` of another file moves the watch there."""
    mount = tmp_path / "mount"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "fleet.yaml").write_text(FLEET)
    (mount / "..data").symlink_to("..v1")
    (mount / "fleet.yaml").symlink_to("..data/fleet.yaml")
    source = str(mount / "fleet.yaml")
    app, checker = FakeApp(source), FakeChecker()
    reapplier = _reapplier(checker, watch_debounce=0.05)
    reapplier.watched[source] = FLEET.encode()  # as applied at start
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reapplier.watch, app)
            await anyio.wait_all_tasks_blocked()
            (mount / "..v2").mkdir()  # what the kubelet does, in its order
            (mount / "..v2" / "fleet.yaml").write_text(FLEET.replace("m:e", "m:v2"))
            (mount / "..data_tmp").symlink_to("..v2")
            (mount / "..data_tmp").rename(mount / "..data")
            shutil.rmtree(mount / "..v1")
            await app.changed.wait()
            assert [r.fleet["agents"]["a"]["entrypoint"] for r in app.applied] == ["m:v2"]

            other = tmp_path / "other.yaml"  # `lksup apply other.yaml`: it is the source now
            other.write_text(FLEET.replace("m:e", "m:other"))
            app.source = str(other)
            reapplier.watched[app.source] = other.read_bytes()
            app.supervisor.notify()
            await anyio.wait_all_tasks_blocked()
            app.changed = anyio.Event()
            other.write_text(FLEET.replace("m:e", "m:edited"))
            await app.changed.wait()
            assert [r.fleet["agents"]["a"]["entrypoint"] for r in app.applied] == [
                "m:v2",
                "m:edited",
            ]
            assert all(call[0] != source for call in checker.calls[1:])
            tg.cancel_scope.cancel()
