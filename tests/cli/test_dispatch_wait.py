"""``lksup dispatch --wait`` hears who took the job from this host's supervisor too: a job that
ends at once closes its room, and the dispatch leaves the server's list before a poll of it
sees a worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from lksup.cli import dispatch

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeApi:
    """A dispatch API whose list shows the dispatch once, then never (``worker``: with its job
    taken by that worker, and then for good)."""

    worker: str = ""
    listed: int = 0
    gone: anyio.Event = field(default_factory=anyio.Event)

    async def create_dispatch(self, settings: Any, **fields: str) -> Any:
        return SimpleNamespace(id="AD_1", room=fields["room"], state=SimpleNamespace(jobs=[]))

    async def list_dispatches(self, settings: Any, room: str) -> list[Any]:
        self.listed += 1
        if self.listed == 1 or self.worker:
            job = SimpleNamespace(id="AJ_1", state=SimpleNamespace(worker_id=self.worker))
            jobs = [job] if self.worker else []
            return [SimpleNamespace(id="AD_1", room=room, state=SimpleNamespace(jobs=jobs))]
        self.gone.set()
        return []


@dataclass
class FakeHere:
    """This host's supervisor: it saw the job end, and says so once the dispatch is gone."""

    api: FakeApi
    after: int | None = 0
    marked: bool = False
    worker_id: str = "AW_1"
    answers: bool = True

    async def mark(self) -> None:
        self.marked = True

    def ours(self, taken: Any) -> bool:
        return any(job.state.worker_id == self.worker_id for job in taken.state.jobs)

    async def job_in(self, room: str) -> dict[str, Any] | None:
        assert self.marked  # before the dispatch was created: no event slips past
        if self.after is None or not self.answers:  # none runs the agent here, or not that job
            await anyio.sleep_forever()
        if self.api.worker:  # the server's list answers first, then the supervisor here
            while not self.api.listed:
                await anyio.sleep(0)
        else:
            await self.api.gone.wait()
        return {"jobId": "AJ_1", "workerId": "AW_1", "status": "succeeded"}


async def test_a_job_that_ended_at_once_is_reported_from_this_hosts_supervisor() -> None:
    api = FakeApi()
    here = FakeHere(api)
    with anyio.fail_after(10):
        created, taken = await dispatch._create_and_wait(
            api, None, cast(dispatch._LocalJobs, here), "survey", "survey-1", "", 30.0
        )
    assert created.id == "AD_1"
    assert taken == {"jobId": "AJ_1", "workerId": "AW_1", "status": "succeeded"}


async def test_without_a_supervisor_here_the_servers_list_says_the_dispatch_left() -> None:
    api = FakeApi()
    here = FakeHere(api, after=None)
    with anyio.fail_after(10):
        _, taken = await dispatch._create_and_wait(
            api, None, cast(dispatch._LocalJobs, here), "survey", "survey-1", "", 30.0
        )
    assert taken is dispatch._GONE


async def test_when_the_list_names_this_hosts_worker_first_the_supervisor_here_still_says() -> None:
    """Regression: the dev server's list named the worker before the supervisor's job event
    arrived, and the output depended on which came first."""
    api = FakeApi(worker="AW_1")
    with anyio.fail_after(10):
        _, taken = await dispatch._create_and_wait(
            api, None, cast(dispatch._LocalJobs, FakeHere(api)), "survey", "survey-1", "", 30.0
        )
    assert taken == {"jobId": "AJ_1", "workerId": "AW_1", "status": "succeeded"}


async def test_a_job_another_hosts_worker_took_is_reported_from_the_list_at_once() -> None:
    api = FakeApi(worker="AW_elsewhere")
    here = FakeHere(api, answers=False)  # this host's worker did not take it: never says
    with anyio.fail_after(1):  # no grace: the list names another host's worker
        _, taken = await dispatch._create_and_wait(
            api, None, cast(dispatch._LocalJobs, here), "survey", "survey-1", "", 30.0
        )
    assert taken.state.jobs[0].state.worker_id == "AW_elsewhere"
