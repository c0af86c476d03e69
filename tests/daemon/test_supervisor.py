"""The supervisor reconciling fleets against the dev server: create, update in place, replace
while a job runs, remove, drain one agent, coordinated drain."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from lksup.control.api import ApplyRequest, SimulateRequest
from lksup.control.errors import ControlError
from lksup.daemon.agent import AgentRuntime
from lksup.daemon.app import DaemonApp
from lksup.daemon.resolve import Environment
from lksup.daemon.runtime import Runtime
from lksup.daemon.status import derive
from lksup.daemon.supervisor import RESTART_BACKOFF, Supervisor
from lksup.devserver.server import DevServer
from lksup.fleet.loading import load_fleet
from lksup.fleet.normalize import REVEAL
from lksup.fleet.schema import Fleet
from lksup.monitors.monitor import Monitor
from lksup.protocol.backoff import Backoff
from lksup.reconcile.diff import Action, Plan, diff
from tests.conftest import free_port
from tests.pool.conftest import AGENT

pytestmark = [pytest.mark.anyio, pytest.mark.process]

KEY, SECRET = "devkey", "supervisor-secret-0123456789abcdef012345"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fleet(tmp_path: Path, agents: dict[str, str]) -> Fleet:
    (tmp_path / "pool_test_agent.py").write_text(textwrap.dedent(AGENT))
    body = "".join(
        f"  {name}:\n    entrypoint: pool_test_agent:entrypoint\n{textwrap.indent(extra, '    ')}"
        for name, extra in agents.items()
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: t}\n"
        "supervisor: {drain_timeout: 20}\n"
        "defaults:\n  working_dir: .\n  num_idle_processes: 1\n  load: jobs\n  max_jobs: 2\n"
        "agents:\n" + body
    )
    return load_fleet(str(path), environ={}).fleet


@asynccontextmanager
async def supervised(
    tmp_path: Path, *, restart_backoff: Backoff = RESTART_BACKOFF
) -> AsyncIterator[tuple[Supervisor, DevServer]]:
    server = DevServer({KEY: SECRET}, port=0, claim_delay=0.0)
    monitor = Monitor(cpu_interval=0.1, memory_interval=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(monitor.run)
        env = Environment(
            environ={},
            base_dir=tmp_path,
            default_url=server.url,
            default_api_key=KEY,
            default_api_secret=SECRET,
        )
        supervisor = Supervisor(env, monitor, restart_backoff=restart_backoff)
        await tg.start(supervisor.run)
        try:
            yield supervisor, server
        finally:
            await supervisor.stop_all()
            tg.cancel_scope.cancel()


def real(runtime: Runtime | None) -> AgentRuntime:
    """The supervisor's runtime, an ``AgentRuntime`` here (these tests look inside it)."""
    assert isinstance(runtime, AgentRuntime)
    return runtime


def registered(server: DevServer, name: str) -> list[str]:
    return [w.id for w in server.workers() if w.agent_name == name]


async def test_apply_create_update_replace_remove(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with supervised(tmp_path) as (sup, server):
        plan = await sup.apply(fleet(tmp_path, {"alpha": "", "beta": ""}))
        assert [a.action for a in plan.agents] == [Action.CREATE, Action.CREATE]
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: {w.agent_name for w in ws} == {"alpha", "beta"})
        alpha = real(sup.slots["alpha"].runtime)
        assert alpha is not None
        with anyio.fail_after(30):
            await alpha.pool.wait_until(lambda: len(alpha.pool.idle) == 1)
        warm_pid = alpha.pool.idle[0].pid
        worker_id = registered(server, "alpha")

        # update in place: a threshold and the pool size; no process restarted
        plan = await sup.apply(fleet(tmp_path, {"alpha": "load_threshold: 0.5\n", "beta": ""}))
        assert {a.name: a.action for a in plan.agents}["alpha"] is Action.UPDATE_IN_PLACE
        assert sup.slots["alpha"].runtime is alpha
        assert alpha.pool.idle[0].pid == warm_pid
        assert registered(server, "alpha") == worker_id

        # replace while a job runs on the old runtime: the job goes on, the new one registers
        await server.create_dispatch("room-hold", "alpha", metadata="hold")
        with anyio.fail_after(30):
            await alpha.pool.wait_until(lambda: len(alpha.pool.running) == 1)
        plan = await sup.apply(
            fleet(tmp_path, {"alpha": "load_threshold: 0.5\nenv: {MODEL: large}\n", "beta": ""})
        )
        assert {a.name: a.action for a in plan.agents}["alpha"] is Action.REPLACE
        new = real(sup.slots["alpha"].runtime)
        assert new is not None
        assert new is not alpha
        with anyio.fail_after(30):
            await new.session.wait_registered()
            await sup.wait_until(lambda: alpha in sup.slots["alpha"].draining)
        assert len(alpha.pool.running) == 1  # not disturbed
        await server.create_dispatch("room-new", "alpha")  # the new worker takes new offers
        with anyio.fail_after(30):
            await new.pool.wait_until(lambda: new.pool.stats.jobs_succeeded == 1)
        (job_id,) = alpha.pool.running
        alpha.pool.terminate(job_id)  # the old job ends; the old runtime then goes away
        with anyio.fail_after(30):
            await sup.wait_until(lambda: not sup.slots["alpha"].draining)
        # the counters span both runtimes: a replace never resets them (metrics are counters)
        totals = sup.slots["alpha"].totals()
        assert totals.jobs_succeeded + totals.jobs_failed == 2
        assert totals.start_latency.count == 2
        assert totals.offers["accepted"] == 2

        # remove: drained, then gone
        plan = await sup.apply(
            fleet(tmp_path, {"alpha": "load_threshold: 0.5\nenv: {MODEL: large}\n"})
        )
        assert {a.name: a.action for a in plan.agents}["beta"] is Action.DRAIN_AND_REMOVE
        with anyio.fail_after(30):
            await sup.wait_until(lambda: "beta" not in sup.slots)
            await server.wait_workers(lambda ws: not registered(server, "beta"))
    # an idle process says why it stops (regression: always "supervisor stopping")
    idle_stops = [r.getMessage() for r in caplog.records if "while idle" in r.getMessage()]
    assert "Shutting down while idle: agent replaced." in idle_stops
    assert "Shutting down while idle: agent removed." in idle_stops


async def test_drain_one_agent_while_others_keep_accepting(tmp_path: Path) -> None:
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": "", "beta": ""}))
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: {w.agent_name for w in ws} == {"alpha", "beta"})
        sup.drain("alpha")
        assert sup.slots["alpha"].override_drained
        with anyio.fail_after(30):
            await sup.wait_until(lambda: sup.agent_state(sup.slots["alpha"]) == "drained")
        beta = real(sup.slots["beta"].runtime)
        assert beta is not None
        await server.create_dispatch("room-b", "beta")
        with anyio.fail_after(30):
            await beta.pool.wait_until(lambda: beta.pool.stats.jobs_succeeded == 1)
        sup.undrain("alpha")
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: bool(registered(server, "alpha")))


async def test_coordinated_drain_waits_for_jobs_and_reports_the_deadline(tmp_path: Path) -> None:
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        alpha = real(sup.slots["alpha"].runtime)
        assert alpha is not None
        await alpha.session.wait_registered()
        await server.create_dispatch("room-hold", "alpha", metadata="hold")
        with anyio.fail_after(30):
            await alpha.pool.wait_until(lambda: len(alpha.pool.running) == 1)
        with anyio.fail_after(10):
            assert await sup.drain_all(0.5) is False  # the held job outlives the deadline
        assert sup.running_jobs() == 0


async def test_the_initialisation_cap_follows_the_fleet(tmp_path: Path) -> None:
    """Regression: `auto` left the cap at 4 instead of min(CPU count, 4)."""
    path = tmp_path / "f.yaml"
    monitor = Monitor()
    sup = Supervisor(Environment(environ={}, base_dir=tmp_path), monitor)
    for cap, expected in (("auto", min(os.cpu_count() or 1, 4)), ("1", 1)):
        path.write_text(
            "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: c}\n"
            f"supervisor: {{max_concurrent_initializations: {cap}}}\nagents: {{}}\n"
        )
        await sup.apply(load_fleet(str(path), environ={}).fleet)
        assert sup.limiter.total_tokens == expected


SIM = SimulateRequest(room="room-sim")
QUICK = Backoff(initial_delay=0.2, factor=2.0, max_delay=0.4, jitter=0.0)


async def test_an_agent_whose_connection_gave_up_comes_back_without_an_apply(
    tmp_path: Path,
) -> None:
    """Level-triggered: after max_retry failed attempts the agent is restarted after a backoff,
    again and again, until its server answers; the other agents never notice."""
    port = free_port()
    async with supervised(tmp_path, restart_backoff=QUICK) as (sup, server):
        app = DaemonApp(sup, tmp_path / "state")
        await sup.apply(
            fleet(
                tmp_path,
                {"alpha": f"max_retry: 1\nlivekit: {{url: 'ws://127.0.0.1:{port}'}}\n", "beta": ""},
            )
        )
        slot = sup.slots["alpha"]
        with anyio.fail_after(10):
            await sup.wait_until(lambda: sup.agent_state(slot) == "backoff")
        row = app.agent_status(slot)
        assert row.state == "backoff"
        assert row.sync == "pending"
        assert "connection gave up after 1 attempt(s)" in row.message
        assert "restarting in" in row.message
        conditions = {c.type: c for c in row.conditions}
        assert (conditions["Registered"].status, conditions["Registered"].reason) == (
            "False",
            "ConnectionFailed",
        )
        assert "connection gave up" in conditions["Registered"].message
        with anyio.fail_after(10):  # the restart fails too: the agent stays in backoff
            await sup.wait_until(lambda: slot.restarts >= 1 and sup.agent_state(slot) == "backoff")
        assert slot.failures >= 2
        beta = real(sup.slots["beta"].runtime)
        assert beta is not None
        with anyio.fail_after(30):
            await beta.session.wait_registered()

        late = DevServer({KEY: SECRET}, port=port, claim_delay=0.0)  # the server comes up
        async with anyio.create_task_group() as tg:
            await tg.start(late.run)
            with anyio.fail_after(30):
                await late.wait_workers(lambda ws: bool(registered(late, "alpha")))
            runtime = real(slot.runtime)
            assert runtime is not None
            with anyio.fail_after(10):
                await runtime.session.wait_registered()
            row = app.agent_status(slot)
            assert (row.state, row.sync, row.message) == ("running", "synced", "")
            assert {c.type: c.status for c in row.conditions} == {
                "Registered": "True",
                "Ready": "True",
                "Accepting": "True",
                "PoolWarm": "True" if runtime.pool.idle else "False",
                "Synced": "True",
            }
            assert row.restarts >= 2
            assert registered(server, "beta")  # never disturbed
            await sup.stop_all()
            tg.cancel_scope.cancel()


async def test_an_agent_drained_by_the_operator_is_not_restarted(tmp_path: Path) -> None:
    port = free_port()
    async with supervised(tmp_path, restart_backoff=QUICK) as (sup, _server):
        await sup.apply(
            fleet(tmp_path, {"alpha": f"max_retry: 1\nlivekit: {{url: 'ws://127.0.0.1:{port}'}}\n"})
        )
        slot = sup.slots["alpha"]
        with anyio.fail_after(10):
            await sup.wait_until(lambda: sup.agent_state(slot) == "backoff")
        sup.drain("alpha")
        assert slot.restart_at is None
        assert sup.agent_state(slot) == "drained"
        restarts = slot.restarts
        with anyio.move_on_after(1.0):  # several backoff periods: nothing happens
            await sup.wait_until(lambda: slot.restarts != restarts)
        assert slot.restarts == restarts
        sup.undrain("alpha")  # undrain starts it again at once
        assert slot.restarts == restarts
        assert sup.agent_state(slot) in ("pending", "starting", "connecting", "backoff", "failed")


async def test_a_drained_agent_removed_by_apply_goes_away(tmp_path: Path) -> None:
    """Regression: a runtime that had already ended stayed on the draining list forever."""
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": "", "beta": ""}))
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: {w.agent_name for w in ws} == {"alpha", "beta"})
        sup.drain("beta")
        with anyio.fail_after(10):
            await sup.wait_until(lambda: sup.agent_state(sup.slots["beta"]) == "drained")
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        with anyio.fail_after(10):
            await sup.wait_until(lambda: "beta" not in sup.slots)


async def test_reload_leaves_a_drained_agent_drained_and_undrain_brings_it_back(
    tmp_path: Path,
) -> None:
    async with supervised(tmp_path) as (sup, server):
        app = DaemonApp(sup, tmp_path / "state")
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: bool(registered(server, "alpha")))
        sup.drain("alpha")
        with anyio.fail_after(10):
            await server.wait_workers(lambda ws: not registered(server, "alpha"))
        assert sup.reload("alpha") is False  # a reload does not make it take jobs again
        assert (await app.reload(None))["skipped_drained"] == ["alpha"]
        row = app.agent_status(sup.slots["alpha"])
        assert (row.state, row.sync) == ("drained", "override")
        sup.undrain("alpha")
        runtime = real(sup.slots["alpha"].runtime)
        assert runtime is not None
        with anyio.fail_after(30):  # registered, and the old worker's processes are gone
            await runtime.session.wait_registered()
            await sup.wait_until(lambda: not sup.slots["alpha"].draining)
        row = app.agent_status(sup.slots["alpha"])
        assert (row.state, row.sync, row.message) == ("running", "synced", "")


async def test_a_replacement_that_cannot_register_leaves_the_old_worker_serving(
    tmp_path: Path,
) -> None:
    """No offer is missed: the old worker drains only once the new one registered."""
    dead = f"livekit: {{url: 'ws://127.0.0.1:{free_port()}'}}\n"
    async with supervised(tmp_path, restart_backoff=QUICK) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        old = real(sup.slots["alpha"].runtime)
        assert old is not None
        with anyio.fail_after(30):
            await old.session.wait_registered()
        plan = await sup.apply(fleet(tmp_path, {"alpha": "max_retry: 1\n" + dead}))
        assert plan.agents[0].action is Action.REPLACE
        slot = sup.slots["alpha"]
        with anyio.fail_after(10):  # the new worker fails, again and again
            await sup.wait_until(lambda: slot.restarts >= 2)
        assert slot.previous == [old]
        assert not old.session.machine.draining
        await server.create_dispatch("room-meanwhile", "alpha")  # the old worker still serves
        with anyio.fail_after(30):
            await old.pool.wait_until(lambda: old.pool.stats.jobs_succeeded == 1)
        plan = await sup.apply(fleet(tmp_path, {"alpha": "max_retry: 2\n"}))  # fixed
        new = real(slot.runtime)
        assert new is not None
        with anyio.fail_after(30):
            await new.session.wait_registered()
            await sup.wait_until(lambda: not slot.previous and not slot.draining)
        assert old.done
        assert registered(server, "alpha") == [new.session.machine.worker_id]


async def test_a_removed_agent_is_stopped_at_its_drain_timeout(tmp_path: Path) -> None:
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": "drain_timeout: 1\n", "beta": ""}))
        alpha = real(sup.slots["alpha"].runtime)
        assert alpha is not None
        with anyio.fail_after(30):
            await alpha.session.wait_registered()
        await server.create_dispatch("room-hold", "alpha", metadata="hold")
        with anyio.fail_after(30):
            await alpha.pool.wait_until(lambda: len(alpha.pool.running) == 1)
        await sup.apply(fleet(tmp_path, {"beta": ""}))
        assert sup.agent_state(sup.slots["alpha"]) == "draining"
        with anyio.fail_after(15):  # the held job would run forever: the deadline stops it
            await sup.wait_until(lambda: "alpha" not in sup.slots)
        assert not alpha.pool.running


async def test_an_apply_that_changes_a_drained_agent_clears_its_override(
    tmp_path: Path,
) -> None:
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": "", "beta": ""}))
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: {w.agent_name for w in ws} == {"alpha", "beta"})
        sup.drain("alpha")
        sup.drain("beta")
        with anyio.fail_after(10):
            await server.wait_workers(lambda ws: not ws)
        same = fleet(tmp_path, {"alpha": "", "beta": ""})
        changed = fleet(tmp_path, {"alpha": "load_threshold: 0.5\n", "beta": ""})
        assert sup.overrides_cleared_by(diff_plan(sup, same)) == []
        assert sup.overrides_cleared_by(diff_plan(sup, changed)) == ["alpha"]
        await sup.apply(changed)
        assert not sup.slots["alpha"].override_drained
        assert sup.slots["beta"].override_drained  # unchanged: still drained
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: [w.agent_name for w in ws] == ["alpha"])


def diff_plan(sup: Supervisor, new: Fleet) -> Plan:
    return diff(sup.fleet, new)


async def test_a_rotated_secret_file_replaces_the_agent_on_the_next_apply(
    tmp_path: Path,
) -> None:
    """References compare equal in the plan; what they resolve to is read again each apply."""
    token = tmp_path / "token"
    token.write_text("first-token-value\n")
    agents = {"alpha": f"env: {{TOKEN: {{file: {token}}}}}\n", "beta": ""}
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, agents))
        old = real(sup.slots["alpha"].runtime)
        assert old is not None
        with anyio.fail_after(30):
            await old.session.wait_registered()
        plan = await sup.apply(fleet(tmp_path, agents))
        assert sup.rotated == []  # nothing changed: nothing replaced
        assert sup.slots["alpha"].runtime is old

        token.write_text("rotated-token-value\n")
        plan = await sup.apply(fleet(tmp_path, agents))
        assert {a.action for a in plan.agents} == {Action.UNCHANGED}
        assert sup.rotated == ["alpha"]
        new = real(sup.slots["alpha"].runtime)
        assert new is not None
        assert new is not old
        assert new.pool.spec.env["TOKEN"] == "rotated-token-value"
        with anyio.fail_after(30):  # a rolling replace: the new worker first, then the old goes
            await new.session.wait_registered()
            await sup.wait_until(lambda: old.done)
        assert registered(server, "alpha") == [new.session.machine.worker_id]
        assert sup.slots["beta"].restarts == 0


async def test_an_agent_whose_secret_cannot_be_read_fails_alone(tmp_path: Path) -> None:
    """Regression: an unreadable env secret raised out of apply instead of failing the agent."""
    agents = {"alpha": "env: {TOKEN: {env: LKSUP_TEST_NOT_SET}}\n", "beta": ""}
    async with supervised(tmp_path, restart_backoff=QUICK) as (sup, server):
        app = DaemonApp(sup, tmp_path / "state")
        await sup.apply(fleet(tmp_path, agents))
        row = app.agent_status(sup.slots["alpha"])
        assert row.state == "backoff"
        assert "LKSUP_TEST_NOT_SET" in row.message
        beta = real(sup.slots["beta"].runtime)
        assert beta is not None
        with anyio.fail_after(30):
            await beta.session.wait_registered()
        assert [w.agent_name for w in server.workers()] == ["beta"]


async def hold_a_job(sup: Supervisor, server: DevServer, name: str) -> AgentRuntime:
    runtime = real(sup.slots[name].runtime)
    assert runtime is not None
    with anyio.fail_after(30):
        await runtime.session.wait_registered()
    await server.create_dispatch(f"room-{name}", name, metadata="hold")
    with anyio.fail_after(30):
        await runtime.pool.wait_until(lambda: len(runtime.pool.running) == 1)
    return runtime


async def test_undrain_calls_off_the_drain_deadline(tmp_path: Path) -> None:
    """Regression: the deadline of a drain that was undone still stopped the agent later."""
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": "drain_timeout: 1\n"}))
        alpha = await hold_a_job(sup, server, "alpha")
        sup.drain("alpha")
        sup.undrain("alpha")
        with anyio.move_on_after(2.0):  # twice the deadline: nothing may happen
            await sup.wait_until(lambda: not alpha.pool.running)
        assert len(alpha.pool.running) == 1
        assert sup.agent_state(sup.slots["alpha"]) == "running"


async def test_an_agent_deadline_in_a_coordinated_drain_means_not_in_time(
    tmp_path: Path,
) -> None:
    """Regression: jobs stopped at an agent's own drain_timeout still gave exit 0."""
    async with supervised(tmp_path) as (sup, server):
        await sup.apply(fleet(tmp_path, {"alpha": "drain_timeout: 1\n"}))  # fleet-wide: 20 s
        await hold_a_job(sup, server, "alpha")
        with anyio.fail_after(10):
            assert await sup.drain_all(20) is False


async def test_an_agent_being_removed_cannot_be_undrained_or_reloaded(tmp_path: Path) -> None:
    """Regression: undrain or reload brought a removed agent back for good."""
    async with supervised(tmp_path) as (sup, server):
        app = DaemonApp(sup, tmp_path / "state")
        await sup.apply(fleet(tmp_path, {"alpha": "", "beta": ""}))
        beta = await hold_a_job(sup, server, "beta")
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        row = app.agent_status(sup.slots["beta"])
        assert row.state == "draining"
        assert row.jobs == 1  # the old runtime's job is still the agent's
        assert [j.room for j in row.jobs_detail] == ["room-beta"]
        for call in (app.undrain("beta"), app.reload("beta"), app.simulate("beta", SIM)):
            with pytest.raises(ControlError) as refused:
                await call
            assert refused.value.code == "removed"
        assert (await app.reload(None))["reloading"] == ["alpha"]
        assert (await app.drain("alpha"))["jobs"] == 0  # alpha's jobs only, not beta's
        assert sup.slots["beta"].runtime is None
        beta.pool.terminate(next(iter(beta.pool.running)))
        with anyio.fail_after(10):
            await sup.wait_until(lambda: "beta" not in sup.slots)


async def test_nothing_changes_once_the_supervisor_is_shutting_down(tmp_path: Path) -> None:
    async with supervised(tmp_path) as (sup, _server):
        app = DaemonApp(sup, tmp_path / "state")
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        with anyio.fail_after(10):
            assert await sup.drain_all(5) is True
        # a stop's drain is no operator's: SYNC does not turn "override" (regression)
        assert not sup.slots["alpha"].override_drained
        assert derive(sup.snapshot(sup.slots["alpha"])).sync != "override"
        request = ApplyRequest(
            fleet=fleet(tmp_path, {"alpha": "", "beta": ""}).model_dump(
                mode="json", by_alias=True, context=REVEAL
            )
        )
        for call in (app.apply(request), app.undrain("alpha"), app.reload(None)):
            with pytest.raises(ControlError) as refused:
                await call
            assert refused.value.code == "shutting_down"
        assert "beta" not in sup.slots


async def test_relative_secret_files_resolve_from_the_applied_file(tmp_path: Path) -> None:
    """Regression: {file: tok.txt} next to the fleet resolved against the daemon's start dir."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "tok.txt").write_text("from-the-fleet-folder\n")
    written = fleet(conf, {"alpha": "env: {TOKEN: {file: tok.txt}}\n"})
    async with supervised(tmp_path) as (sup, _server):  # started from another folder
        app = DaemonApp(sup, tmp_path / "state")
        request = ApplyRequest(
            fleet=written.model_dump(mode="json", by_alias=True, context=REVEAL),
            source=str(conf / "fleet.yaml"),
        )
        await app.apply(request)
        runtime = real(sup.slots["alpha"].runtime)
        assert runtime is not None
        assert runtime.pool.spec.env["TOKEN"] == "from-the-fleet-folder"
        with anyio.fail_after(30):
            await runtime.session.wait_registered()


async def test_reloads_of_a_replacement_that_cannot_warm_up_never_pile_up_workers(
    tmp_path: Path,
) -> None:
    """Regression: each reload left one more registered worker while the replacement's
    prewarm kept failing; status showed one and said synced."""
    async with supervised(tmp_path) as (sup, server):
        app = DaemonApp(sup, tmp_path / "state")
        await sup.apply(fleet(tmp_path, {"alpha": ""}))
        old = real(sup.slots["alpha"].runtime)
        assert old is not None
        with anyio.fail_after(30):
            await old.session.wait_registered()
        broken = "prewarm: pool_test_agent:prewarm\nenv: {FAIL_PREWARM: '1'}\n"
        await sup.apply(fleet(tmp_path, {"alpha": broken}))
        for _ in range(3):
            new = real(sup.slots["alpha"].runtime)
            assert new is not None
            with anyio.fail_after(30):
                await new.session.wait_registered()  # registers, but never warms up
            sup.reload("alpha")
        slot = sup.slots["alpha"]
        assert slot.previous == [old]  # the one that works keeps serving
        current = real(slot.runtime)
        assert current is not None
        with anyio.fail_after(30):  # the unready replacements went away
            await current.session.wait_registered()
            await server.wait_workers(lambda ws: len(registered(server, "alpha")) == 2)
        row = app.agent_status(slot)
        assert row.sync == "pending"
        assert "the new worker is not ready yet; the old one keeps taking jobs" in row.message
