"""Job processes forked from templates: the tree, per-agent environments over a shared base,
template and base crashes, isolated templates, and the plugins the base learns to preload."""

from __future__ import annotations

import json
import logging
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from lksup.jobs import ipc
from lksup.pool.process import ProcessSpec
from lksup.pool.zygote import LOCAL_MODELS, PRELOAD_VARIABLE, Zygotes, _base_environment
from tests.conftest import eventually
from tests.pool.helpers import (
    Reporter,
    make_job,
    offer_and_run,
    running_pool,
    spec,
    wait_for,
    zygote_service,
)

pytestmark = [pytest.mark.anyio, pytest.mark.process]

REPORTER = """
import json, os, sys

SEEN_AT_IMPORT = os.environ.get("AGENT_COLOUR", "")


def prewarm(proc):
    proc.userdata["pid"] = os.getpid()


async def entrypoint(ctx):
    with open(os.path.join(os.environ["OUT_DIR"], ctx.job.id + ".json"), "w") as f:
        json.dump(
            {
                "colour": os.environ.get("AGENT_COLOUR"),
                "other": os.environ.get("OTHER_ONLY"),
                "at_import": SEEN_AT_IMPORT,
                "cwd": os.getcwd(),
                "path0": sys.path[0],
                "secret": os.environ.get("AGENT_SECRET"),
            },
            f,
        )
    print("job output for", ctx.job.id)
"""


def agent(tmp_path: Path, name: str, colour: str, **env: str) -> ProcessSpec:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}_agent.py").write_text(textwrap.dedent(REPORTER))
    (tmp_path / "out").mkdir(exist_ok=True)
    return spec(
        folder,
        agent_name=name,
        entrypoint=f"{name}_agent:entrypoint",
        prewarm=f"{name}_agent:prewarm",
        env={"OUT_DIR": str(tmp_path / "out"), "AGENT_COLOUR": colour, **env},
    )


async def job(pool: object, tmp_path: Path, job_id: str) -> dict[str, Any]:
    from lksup.pool.pool import AgentPool

    assert isinstance(pool, AgentPool)
    reporter = Reporter()
    await offer_and_run(pool, reporter, make_job(job_id))
    assert reporter.ended == {job_id: None}
    result: dict[str, Any] = json.loads((tmp_path / "out" / f"{job_id}.json").read_text())
    return result


def parent(pid: int | None) -> int:
    assert pid is not None
    return psutil.Process(pid).ppid()


async def test_agents_fork_from_their_templates_over_one_shared_base(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    red = agent(tmp_path, "red", "red", OTHER_ONLY="red-only", AGENT_SECRET="s3cr3t-red")
    red = ProcessSpec(**{**red.__dict__, "secrets": frozenset({"s3cr3t-red"})})
    blue = agent(tmp_path, "blue", "blue")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red)) as red_pool,
        running_pool(blue, launcher=zygotes.launcher(blue)) as blue_pool,
    ):
        await wait_for(red_pool, lambda: len(red_pool.idle) == 1)
        await wait_for(blue_pool, lambda: len(blue_pool.idle) == 1)
        (base,) = zygotes.bases.values()
        templates = {t.spec.agent_name: t for t in zygotes.templates.values()}
        # the tree: job process <- its agent's template <- the one shared base
        assert parent(red_pool.idle[0].pid) == templates["red"].pid
        assert parent(blue_pool.idle[0].pid) == templates["blue"].pid
        assert parent(templates["red"].pid) == parent(templates["blue"].pid) == base.pid
        assert parent(base.pid) == os.getpid()
        for process in (red_pool.idle[0], blue_pool.idle[0], base, *templates.values()):
            assert process.pid is not None
            assert os.getsid(process.pid) == process.pid  # a session of its own
        seen_red = await job(red_pool, tmp_path, "AJ_red")
        seen_blue = await job(blue_pool, tmp_path, "AJ_blue")
    assert seen_red == {
        "colour": "red",
        "other": "red-only",
        "at_import": "red",  # the agent's module is imported with the agent's environment
        "cwd": str(tmp_path / "red"),
        "path0": str(tmp_path / "red"),
        "secret": "s3cr3t-red",
    }
    assert seen_blue["colour"] == "blue"
    assert seen_blue["other"] is None  # another agent's variables never leak in
    assert seen_blue["cwd"] == str(tmp_path / "blue")
    # output of forked children reaches the log, with the agent, job and pid
    lines = [r for r in caplog.records if getattr(r, "stream", None) == "stdout"]
    assert "job output for AJ_red" in [r.getMessage() for r in lines]


async def test_a_template_crash_is_that_agents_init_failure_and_the_others_keep_serving(
    tmp_path: Path,
) -> None:
    red = agent(tmp_path, "red", "red")
    blue = agent(tmp_path, "blue", "blue")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red)) as red_pool,
        running_pool(blue, launcher=zygotes.launcher(blue)) as blue_pool,
    ):
        await wait_for(red_pool, lambda: len(red_pool.idle) == 1)
        await wait_for(blue_pool, lambda: len(blue_pool.idle) == 1)
        templates = {t.spec.agent_name: t for t in zygotes.templates.values()}
        red_template = templates["red"]
        assert red_template.pid is not None
        os.kill(red_template.pid, signal.SIGKILL)
        await wait_for(red_pool, lambda: red_pool.last_failure is not None)
        assert red_pool.last_failure == (
            "its template ended unexpectedly (killed by signal SIGKILL)"
        )
        assert red_pool.in_backoff
        # the other agent is untouched, and so is red's warm process
        assert (await job(blue_pool, tmp_path, "AJ_b1"))["colour"] == "blue"
        assert (await job(red_pool, tmp_path, "AJ_r1"))["colour"] == "red"
        # after its backoff, red forks from a new template
        await wait_for(red_pool, lambda: len(red_pool.idle) == 1, timeout=30)
        new = {t.spec.agent_name: t for t in zygotes.templates.values()}["red"]
        assert new.pid != red_template.pid
        assert parent(red_pool.idle[0].pid) == new.pid


async def test_a_dead_base_is_started_again_and_agents_fork_anew(tmp_path: Path) -> None:
    red = agent(tmp_path, "red", "red")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red), num_idle=1) as pool,
    ):
        await wait_for(pool, lambda: len(pool.idle) == 1)
        (base,) = zygotes.bases.values()
        (template,) = zygotes.templates.values()
        assert base.pid is not None
        os.kill(base.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await base.wait_exited()
        # the template still serves: red's next process, then a new base and template
        assert (await job(pool, tmp_path, "AJ_1"))["colour"] == "red"
        await wait_for(pool, lambda: len(pool.idle) == 1, timeout=30)
        (new_base,) = zygotes.bases.values()
        assert new_base.pid != base.pid
        assert parent(parent(pool.idle[0].pid)) == new_base.pid
        assert (await job(pool, tmp_path, "AJ_2"))["colour"] == "red"
        with anyio.fail_after(20):  # the old template retires once its children are gone
            await template.wait_exited()


async def test_an_isolated_template_is_started_with_the_agents_environment(
    tmp_path: Path,
) -> None:
    red = agent(tmp_path, "red", "red")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red, isolated=True)) as pool,
    ):
        await wait_for(pool, lambda: len(pool.idle) == 1)
        assert not zygotes.bases  # no shared base is involved
        (template,) = zygotes.templates.values()
        assert parent(template.pid) == os.getpid()
        assert parent(pool.idle[0].pid) == template.pid
        assert (await job(pool, tmp_path, "AJ_1"))["at_import"] == "red"


async def test_an_agent_module_that_cannot_be_imported_fails_its_template(tmp_path: Path) -> None:
    red = agent(tmp_path, "red", "red")
    (tmp_path / "red" / "red_agent.py").write_text("raise RuntimeError('no model file')\n")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red)) as pool,
    ):
        await wait_for(pool, lambda: pool.last_failure is not None)
        assert pool.last_failure == (
            "its template failed to start: cannot import module 'red_agent': "
            "RuntimeError: no model file (at red_agent.py:1)"
        )


async def test_the_base_learns_the_plugins_agents_import(tmp_path: Path) -> None:
    red = agent(tmp_path, "red", "red")
    (tmp_path / "red" / "red_agent.py").write_text(
        "import livekit.plugins.silero  # noqa: F401\n" + textwrap.dedent(REPORTER)
    )
    learned: list[list[str]] = []
    async with zygote_service(defaults=True, on_learned=learned.append) as zygotes:
        assert isinstance(zygotes, Zygotes)
        async with running_pool(red, launcher=zygotes.launcher(red), num_idle=1) as pool:
            await wait_for(pool, lambda: len(pool.idle) == 1, timeout=60)
            assert learned == [["livekit.plugins.silero"]]
            assert "livekit.plugins.silero" in zygotes.preload
            # the next process comes from a new base that preloaded the plugin
            await job(pool, tmp_path, "AJ_1")
            await wait_for(pool, lambda: len(pool.idle) == 1, timeout=60)
            (base,) = zygotes.bases.values()
            assert base.zygote is not None
            assert "livekit.plugins.silero" in base.zygote.plugins
            assert parent(parent(pool.idle[0].pid)) == base.pid


PREWARM_REPORTER = """
import json, os, threading

def prewarm(proc):
    with open(os.path.join(os.environ["OUT_DIR"], "prewarm.log"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    if os.environ.get("PREWARM_MODE") == "thread":
        threading.Thread(target=threading.Event().wait, daemon=True, name="poller").start()
    if os.environ.get("PREWARM_MODE") == "raise":
        raise RuntimeError("no model file")
    proc.userdata["model"] = "weights-" + os.environ["AGENT_COLOUR"]


async def entrypoint(ctx):
    with open(os.path.join(os.environ["OUT_DIR"], ctx.job.id + ".json"), "w") as f:
        json.dump(
            {"model": ctx.proc.userdata.get("model"), "pid": os.getpid(), "proc_pid": ctx.proc.pid},
            f,
        )
"""


def prewarm_agent(tmp_path: Path, mode: str = "") -> ProcessSpec:
    red = agent(tmp_path, "red", "red", PREWARM_MODE=mode)
    (tmp_path / "red" / "red_agent.py").write_text(textwrap.dedent(PREWARM_REPORTER))
    return red


def ended(pid: int) -> bool:
    """Whether process ``pid`` is gone (or a zombie about to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def prewarm_pids(tmp_path: Path) -> list[int]:
    return [int(line) for line in (tmp_path / "out" / "prewarm.log").read_text().split()]


async def test_prewarm_runs_once_in_the_template_and_every_fork_starts_with_its_result(
    tmp_path: Path,
) -> None:
    red = prewarm_agent(tmp_path)
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red, prepare=True), num_idle=2) as pool,
    ):
        await wait_for(pool, lambda: len(pool.idle) == 2)
        (template,) = zygotes.templates.values()
        assert template.zygote is not None
        assert template.zygote.prepared
        first = await job(pool, tmp_path, "AJ_1")
        second = await job(pool, tmp_path, "AJ_2")
        await wait_for(pool, lambda: len(pool.idle) == 2)
    # three processes forked (two warm, one refill), one prewarm: in the template
    assert prewarm_pids(tmp_path) == [template.pid]
    for seen in (first, second):
        assert seen["model"] == "weights-red"
        assert seen["proc_pid"] == seen["pid"] != template.pid  # ctx.proc.pid is the job's
    assert first["pid"] != second["pid"]


async def test_with_prewarm_in_process_each_fork_runs_prewarm(tmp_path: Path) -> None:
    red = prewarm_agent(tmp_path)
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red, prepare=False), num_idle=2) as pool,
    ):
        await wait_for(pool, lambda: len(pool.idle) == 2)
        pids = sorted(p.pid for p in pool.idle if p.pid is not None)
        seen = await job(pool, tmp_path, "AJ_1")
    assert sorted(prewarm_pids(tmp_path)[:2]) == pids
    assert seen["model"] == "weights-red"


async def test_a_prewarm_that_leaves_a_thread_running_runs_in_each_process_instead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.zygote")
    red = prewarm_agent(tmp_path, mode="thread")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red, prepare=True), num_idle=1) as pool,
    ):
        await wait_for(pool, lambda: len(pool.idle) == 1)
        (template,) = zygotes.templates.values()
        assert template.zygote is not None
        assert not template.zygote.prepared
        (reason,) = zygotes.unforkable.values()
        assert reason == "prewarm red_agent:prewarm left 1 thread(s) still running (poller)"
        warm = pool.idle[0].pid
        seen = await job(pool, tmp_path, "AJ_1")
    pids = prewarm_pids(tmp_path)
    # the first template ran it, found the thread, and was stopped; the job process ran its own
    assert len(pids) >= 2
    assert pids[0] != template.pid
    assert warm in pids[1:]
    assert ended(pids[0])
    assert seen == {"model": "weights-red", "pid": warm, "proc_pid": warm}
    messages = [r.getMessage() for r in caplog.records if r.name == "lksup.zygote"]
    assert (
        "Agent red: prewarm red_agent:prewarm left 1 thread(s) still running (poller), which a "
        "fork cannot carry: its prewarm runs in each job process instead (prewarm_in: process "
        "says so and skips this check)."
    ) in messages


async def test_a_prewarm_that_fails_in_the_template_is_the_agents_init_failure(
    tmp_path: Path,
) -> None:
    red = prewarm_agent(tmp_path, mode="raise")
    async with (
        zygote_service() as zygotes,
        running_pool(red, launcher=zygotes.launcher(red, prepare=True)) as pool,
    ):
        await wait_for(pool, lambda: pool.last_failure is not None)
        assert pool.last_failure == (
            "its template failed to start: prewarm red_agent:prewarm failed: "
            "RuntimeError: no model file (at red_agent.py:10)"
        )
        assert pool.in_backoff


GATED = """
import os

# the test holds this import until it opens the other end of the FIFO (first template only)
if not os.path.exists(os.environ["GATE"] + ".open"):
    with open(os.environ["GATE"]) as gate:
        gate.read()
"""


def gated_agent(tmp_path: Path, name: str, *, teaches: bool) -> tuple[ProcessSpec, Path]:
    gate = tmp_path / f"{name}.gate"
    os.mkfifo(gate)
    process_spec = agent(tmp_path, name, name, GATE=str(gate))
    module = tmp_path / name / f"{name}_agent.py"
    teach = "import livekit.plugins.silero  # noqa: F401\n" if teaches else ""
    module.write_text(textwrap.dedent(GATED) + teach + textwrap.dedent(REPORTER))
    return process_spec, gate


def forked_from_base(zygotes: Zygotes) -> int:
    """How many processes the (one) base template has forked so far."""
    bases = [b for b in zygotes.bases.values() if b.pid is not None]
    return len(psutil.Process(bases[0].pid).children()) if len(bases) == 1 else 0


async def open_gate(gate: Path) -> None:
    Path(f"{gate}.open").touch()

    def release() -> None:
        with open(gate, "w") as writer:  # blocks until the template opened it to read
            writer.write("go")

    with anyio.fail_after(30):
        await anyio.to_thread.run_sync(release)


async def test_a_template_forked_from_the_base_another_agent_just_taught_is_replaced(
    tmp_path: Path,
) -> None:
    # red teaches the base a plugin while blue's template, forked from the same base, is still
    # importing: blue's template must not be kept (it would keep the old base alive)
    red, red_gate = gated_agent(tmp_path, "red", teaches=True)
    blue, blue_gate = gated_agent(tmp_path, "blue", teaches=False)
    learned: list[list[str]] = []
    async with zygote_service(defaults=True, on_learned=learned.append) as zygotes:
        assert isinstance(zygotes, Zygotes)
        async with (
            running_pool(red, launcher=zygotes.launcher(red), num_idle=1) as red_pool,
            running_pool(blue, launcher=zygotes.launcher(blue), num_idle=1) as blue_pool,
        ):
            await eventually(  # both templates are forked from the first base
                lambda: forked_from_base(zygotes) == 2, timeout=60, interval=0.02
            )
            (old_base,) = zygotes.bases.values()
            await open_gate(red_gate)
            await wait_for(red_pool, lambda: len(red_pool.idle) == 1, timeout=60)
            assert learned == [["livekit.plugins.silero"]]
            await open_gate(blue_gate)
            await wait_for(blue_pool, lambda: len(blue_pool.idle) == 1, timeout=60)
            (base,) = zygotes.bases.values()
            assert base is not old_base
            assert parent(parent(blue_pool.idle[0].pid)) == base.pid
            with anyio.fail_after(30):  # nothing forked from it is left: it retires
                await old_base.wait_exited()


LOCAL_VAD_AGENT = """
from livekit.agents import JobContext, inference


async def entrypoint(ctx: JobContext) -> None:
    stream = inference.VAD().stream()  # the SDK's local VAD model
    await stream.aclose()
    ctx.shutdown("listened")
"""


async def test_the_base_learns_the_local_models_a_job_used(tmp_path: Path) -> None:
    """The base runs the SDK's warm-up without its local models until a job uses one; then a
    new base loads them once, and warm processes come from it."""
    folder = tmp_path / "vad"
    folder.mkdir()
    (folder / "vad_agent.py").write_text(textwrap.dedent(LOCAL_VAD_AGENT))
    listener = spec(
        folder,
        agent_name="listener",
        entrypoint="vad_agent:entrypoint",
        prewarm="",
        runtime=ipc.RUNTIME_LIVEKIT_AGENTS,
        env={PRELOAD_VARIABLE: "0"},  # as the daemon gives SDK job processes
        initialize_timeout=60.0,
    )
    learned: list[list[str]] = []
    async with zygote_service(defaults=True, on_learned=learned.append) as zygotes:
        assert isinstance(zygotes, Zygotes)
        async with running_pool(listener, launcher=zygotes.launcher(listener)) as pool:
            await wait_for(pool, lambda: len(pool.idle) == 1, timeout=60)
            (first,) = zygotes.bases.values()
            assert LOCAL_MODELS not in zygotes.preload
            assert psutil.Process(first.pid).environ()[PRELOAD_VARIABLE] == "0"
            reporter = Reporter()
            await offer_and_run(pool, reporter, make_job("AJ_1"))
            assert reporter.ended == {"AJ_1": None}
            assert learned == [[LOCAL_MODELS]]
            assert LOCAL_MODELS in zygotes.preload
            await wait_for(
                pool,
                lambda: len(pool.idle) == 1 and pool.idle[0].generation == zygotes.generation,
                timeout=60,
            )
            (base,) = zygotes.bases.values()
            assert base is not first
            assert parent(parent(pool.idle[0].pid)) == base.pid


def test_the_base_keeps_the_sdk_preload_setting_of_the_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset: the base runs the SDK's warm-up without the local models, and learns them. Set
    to a false value: nothing learns them. Set to a true value: the SDK loads them itself."""
    zygotes = Zygotes(defaults=True)
    monkeypatch.delenv(PRELOAD_VARIABLE, raising=False)
    assert _base_environment()[PRELOAD_VARIABLE] == "0"
    monkeypatch.setenv(PRELOAD_VARIABLE, "off")
    zygotes.learn_local_models(("eot",))
    assert LOCAL_MODELS not in zygotes.preload
    monkeypatch.setenv(PRELOAD_VARIABLE, "1")
    assert _base_environment()[PRELOAD_VARIABLE] == "1"
    generation = zygotes.generation
    zygotes.learn_local_models(())  # nothing used: nothing learned
    assert zygotes.generation == generation
    zygotes.learn_local_models(("eot", "vad"))
    assert LOCAL_MODELS in zygotes.preload
    assert zygotes.generation == generation + 1
