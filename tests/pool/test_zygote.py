"""Job processes forked from templates: the tree, per-agent environments over a shared base,
template and base crashes, isolated templates, and the plugins the base learns to preload."""

from __future__ import annotations

import json
import logging
import os
import signal
import textwrap
from pathlib import Path

import anyio
import psutil
import pytest

from lksup.pool.process import ProcessSpec
from lksup.pool.zygote import Zygotes
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


async def job(pool: object, tmp_path: Path, job_id: str) -> dict[str, str | None]:
    from lksup.pool.pool import AgentPool

    assert isinstance(pool, AgentPool)
    reporter = Reporter()
    await offer_and_run(pool, reporter, make_job(job_id))
    assert reporter.ended == {job_id: None}
    result: dict[str, str | None] = json.loads((tmp_path / "out" / f"{job_id}.json").read_text())
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
