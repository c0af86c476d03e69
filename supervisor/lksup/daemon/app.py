"""The daemon's answers to the control socket (``control.api.ControlApp``).

Status is built from the supervisor's live objects at the moment of the call (never cached,
never blocked by a drain). Apply validates the fleet document again (the daemon trusts no
client), refuses a plan that would remove every agent unless ``prune_all`` is set, applies it,
and persists it in the state directory. Nothing here returns a secret: the applied fleet is
given back in display form (references and digests).
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import anyio
import pydantic

from lksup.control.api import (
    AgentStatus,
    ApplyRequest,
    FleetStatus,
    JournalQuery,
    SimulateRequest,
    StatusList,
)
from lksup.control.errors import ControlError
from lksup.daemon import report, state
from lksup.daemon.journal import (
    EVENTS_KEPT,
    Event,
    EventRecorder,
    Journal,
    LogBuffer,
)
from lksup.daemon.status import derive
from lksup.daemon.supervisor import AgentSlot, Supervisor
from lksup.fleet.loading import fleet_path
from lksup.fleet.normalize import normalize
from lksup.fleet.schema import Fleet
from lksup.reconcile import render as plan_render
from lksup.reconcile.diff import Action, diff, value_changes


def dev_defaults(fleet: Fleet) -> Fleet:
    """``lksup run --dev``'s development defaults.

    No load threshold, no idle processes, and every job process a fresh interpreter (no
    template keeps the agent's modules imported), so an edit to the agent's code applies to
    the next job.
    """
    update = {"load_threshold": 1.0, "num_idle_processes": 0, "process_start": "spawn"}
    agents = {name: agent.model_copy(update=update) for name, agent in fleet.agents.items()}
    return fleet.model_copy(update={"agents": agents})


#: Seconds between a change and its observation (``DaemonApp.observe_forever``).
OBSERVE_SETTLE = 0.02

#: ``(source, values) -> problems or None``: apply's checks, run where the agents run.
Checker: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[str | None]]


class DaemonApp:
    """Implements the control API on a running ``Supervisor``.

    With ``dev`` every fleet applied (at start, by ``apply``, on SIGHUP) runs with the
    development defaults, while what is persisted and compared (``applied``, ``lksup diff``)
    stays the fleet as written: a restart without ``--dev`` runs it as written.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        state_dir: Path,
        *,
        dev: bool = False,
        checker: Checker | None = None,
        logs: LogBuffer | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.dev = dev
        self.checker = checker
        """Runs apply's import and reference checks on a fleet file in the daemon's own
        environment; the problems as text, or None when it passes."""
        self.fleet: Fleet | None = None  # as applied, before the development defaults
        self.source: str | None = None
        self.values: dict[str, Any] = {}  # the template values of ``source``
        self.revision: str | None = None
        self.recorder = EventRecorder(Journal(EVENTS_KEPT))
        """What happened, for ``lksup events`` (recorded by ``observe`` and the applies)."""
        self.log_buffer = logs
        """Recent log records, for ``lksup logs`` (None: not kept, e.g. in tests)."""
        self.watching = False  # ``lksup run --watch``: changes of ``source`` are applied
        self.reapply_error: tuple[str, float] | None = None
        """Why the latest re-apply of ``source`` changed nothing, and when (monotonic)."""

    def reapply_failed(self, reason: str) -> None:
        """A re-apply of ``source`` (SIGHUP, ``--watch``) changed nothing: status shows why."""
        self.reapply_error = (reason, anyio.current_time())
        self.recorder.record("ApplyFailed", reason, warning=True)

    # --- status --------------------------------------------------------------------------

    def agent_status(self, slot: AgentSlot) -> AgentStatus:
        """One agent's row."""
        return report.agent_status(self.supervisor, slot)

    def observe(self) -> None:
        """Record every agent's conditions now, and the events since the last observation.

        Observed at every change (the supervisor's and its runtimes'), so transition times
        stay precise.
        """
        snapshots = {}
        now = time.time()
        for name, slot in list(self.supervisor.slots.items()):
            view = self.supervisor.snapshot(slot)
            derived = derive(view)
            slot.conditions.observe(derived.facts, now)
            snapshots[name] = report.journal_snapshot(slot, view, derived)
        self.recorder.observe(snapshots)

    async def observe_forever(self, settle: float = OBSERVE_SETTLE) -> None:
        """``observe`` now, and ``settle`` seconds after the supervisor or a runtime changes.

        The changes of one moment (an offer's reservation, its answer, the job's start) are
        observed together, after the work they belong to: never on an offer's way to its
        answer.
        """
        while True:
            changed = self.supervisor.change_event()
            self.observe()
            await changed.wait()
            await anyio.sleep(settle)

    async def status(self, agent: str | None) -> StatusList:
        """Every agent's status, or one agent's."""
        slots = self.supervisor.slots
        if agent is not None:
            if agent not in slots:
                raise self._unknown(agent)
            return StatusList(items=[self.agent_status(slots[agent])], fleet=self.fleet_status())
        return StatusList(
            items=[self.agent_status(slots[n]) for n in sorted(slots)],
            inference=report.inference_status(self.supervisor),
            templates=report.template_status(self.supervisor),
            fleet=self.fleet_status(),
        )

    def fleet_status(self) -> FleetStatus | None:
        """The applied fleet: name, revision, source, and the last failed re-apply."""
        if self.fleet is None:
            return None
        error, error_at = self.reapply_error or (None, None)
        return FleetStatus(
            name=self.fleet.metadata.name,
            revision=self.revision,
            source=self.source,
            watching=self.watching,
            last_error=error,
            last_error_at=report.wall(error_at),
        )

    # --- apply ---------------------------------------------------------------------------------

    async def apply(self, request: ApplyRequest) -> dict[str, Any]:
        """Validate, plan, and (unless a dry run) apply and persist."""
        try:
            fleet, _ = normalize(Fleet.model_validate(request.fleet))
        except pydantic.ValidationError as exc:
            raise ControlError(
                "invalid", f"invalid fleet: {exc.error_count()} error(s)", 422
            ) from None
        self._not_stopping()
        if request.check and request.source is not None and self.checker is not None:
            # where the agents will run: the daemon's environment and directory, not the
            # operator's shell (an import or an {env: ...} the daemon cannot resolve fails
            # here, before anything changes)
            problems = await self.checker(request.source, dict(request.values))
            if problems is not None:
                raise ControlError(
                    "checks_failed",
                    f"{request.source} does not pass its checks where the supervisor runs; "
                    f"nothing changed:\n{problems}",
                    422,
                )
            self._not_stopping()
        effective = dev_defaults(fleet) if self.dev else fleet
        plan = diff(self.supervisor.fleet, effective)
        removes_all = (
            plan.agents
            and not fleet.agents
            and all(a.action is Action.DRAIN_AND_REMOVE for a in plan.agents)
        )
        if removes_all and not request.prune_all:
            raise ControlError(
                "prune_all_required",
                "this fleet removes every agent; pass --prune-all to do that",
                409,
            )
        running = self.supervisor.fleet
        renamed = running is not None and running.metadata.name != fleet.metadata.name
        if renamed and not request.dry_run and not request.replace_fleet:
            assert running is not None
            raise ControlError(
                "replace_fleet_required",
                f"the running fleet is {running.metadata.name!r} and this file is fleet "
                f"{fleet.metadata.name!r}; pass --replace-fleet to replace the one with the "
                "other",
                409,
            )
        document = {
            **plan_render.to_json(plan),
            "overridesCleared": self.supervisor.overrides_cleared_by(plan),
        }
        if renamed:
            assert running is not None
            document["fleetRenamed"] = {"from": running.metadata.name, "to": fleet.metadata.name}
        if running is not None:  # the values a template was rendered with, as a change
            document["values"] = [
                {"path": c.path, "old": c.old, "new": c.new}
                for c in value_changes(self.values, request.values)
            ]
        if request.dry_run:
            return {**document, "dryRun": True}
        applied = state.save(self.state_dir, fleet, source=request.source, values=request.values)
        if request.source is not None:  # relative {file: ...} and working_dir: from its folder
            env = self.supervisor.env
            self.supervisor.env = dataclasses.replace(
                env, base_dir=fleet_path(request.source).parent
            )
        await self.supervisor.apply(effective)
        self.fleet, self.source, self.revision = fleet, request.source, applied.revision
        self.reapply_error = None
        self.recorder.record(
            "Applied",
            f"revision {applied.revision} of fleet {fleet.metadata.name}"
            + (f" from {request.source}" if request.source else "")
            + f": {plan_render.counts(document['summary'])}",
        )
        self.values = dict(request.values)
        self.supervisor.notify()  # the applied source and revision are part of the state
        return {
            **document,
            "revision": applied.revision,
            "secretsChanged": self.supervisor.rotated,
        }

    async def applied(self) -> dict[str, Any] | None:
        """The applied fleet as written (display form: no secret values)."""
        fleet = self.fleet
        if fleet is None:
            return None
        data: dict[str, Any] = fleet.model_dump(
            mode="json", by_alias=True, exclude={"livekit", "defaults"}
        )
        return {
            "revision": self.revision,
            "source": self.source,
            "values": self.values,
            "fleet": data,
        }

    # --- operations ------------------------------------------------------------------------------

    async def events(self, query: JournalQuery) -> dict[str, Any]:
        """``lksup events``: the events after ``query.after``, of ``query.agent`` only."""
        if query.agent is not None and query.agent not in self.supervisor.slots:
            raise self._unknown(query.agent)

        def keep(event: Event) -> bool:
            if query.agent is not None and event.agent != query.agent:
                return False
            if query.job is not None and event.job_id != query.job:
                return False
            return query.since is None or event.at >= query.since

        journal = self.recorder.journal
        found = await journal.after(query.after, query.wait, keep)
        if query.tail is not None:
            found = found[-query.tail :] if query.tail else []
        return {
            "items": [event.document(seq) for seq, event in found],
            "last": found[-1][0] if found else max(query.after, journal.last),
        }

    async def logs(self, query: JournalQuery) -> dict[str, Any]:
        """``lksup logs``: log records after ``query.after``, of an agent or a job."""
        if self.log_buffer is None:
            raise ControlError("unavailable", "this daemon keeps no log records", 503)
        if query.agent is not None and query.agent not in self.supervisor.slots:
            raise self._unknown(query.agent)
        found = await self.log_buffer.read(
            query.after, wait=query.wait, agent=query.agent, job_id=query.job, since=query.since
        )
        if query.tail is not None:
            found = found[-query.tail :] if query.tail else []
        items = []
        for seq, record in found:
            item = {"seq": seq, **record}
            del item["created"]
            items.append(item)
        return {
            "items": items,
            "last": found[-1][0] if found else max(query.after, self.log_buffer.journal.last),
        }

    def _unknown(self, agent: str) -> ControlError:
        """``not_found`` for ``agent``, with the closest known names (a typo's fix)."""
        close = difflib.get_close_matches(agent, sorted(self.supervisor.slots), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
        return ControlError("not_found", f"no agent named {agent!r}{hint}", 404)

    def _known(self, agent: str) -> None:
        if agent not in self.supervisor.slots:
            raise self._unknown(agent)

    def _applied(self, agent: str) -> None:
        """The agent exists and is part of the applied fleet (not being removed)."""
        self._known(agent)
        if self.supervisor.slots[agent].removed:
            raise ControlError(
                "removed",
                f"agent {agent!r} is being removed (it is not in the applied fleet)",
                409,
            )

    def _not_stopping(self) -> None:
        if self.supervisor.stopping:
            raise ControlError(
                "shutting_down", "the supervisor is shutting down; nothing can change now", 409
            )

    async def drain(self, agent: str | None) -> dict[str, Any]:
        """Start draining one agent or all (recorded as overrides)."""
        if agent is not None:
            self._known(agent)
        names = self.supervisor.drain(agent)
        per_agent = self.supervisor.jobs_by_agent()
        return {"draining": names, "jobs": sum(per_agent.get(name, 0) for name in names)}

    async def undrain(self, agent: str) -> dict[str, Any]:
        """Take jobs again."""
        self._not_stopping()
        self._applied(agent)
        self.supervisor.undrain(agent)
        return {"undrained": agent}

    async def reload(self, agent: str | None) -> dict[str, Any]:
        """Rolling replace with the same configuration (agents being removed are left)."""
        self._not_stopping()
        if agent is not None:
            self._applied(agent)
        slots = self.supervisor.slots
        names = [agent] if agent is not None else sorted(n for n in slots if not slots[n].removed)
        if agent is not None and self.supervisor.slots[agent].override_drained:
            raise ControlError(
                "drained",
                f"agent {agent!r} is drained by an operator; `lksup undrain {agent}` first",
                409,
            )
        reloading = [name for name in names if self.supervisor.reload(name)]
        skipped = [name for name in names if name not in reloading]
        return {"reloading": reloading, "skipped_drained": skipped}

    async def simulate(self, agent: str, request: SimulateRequest) -> dict[str, Any]:
        """Ask the server for a job on the agent's own connection."""
        self._not_stopping()
        self._applied(agent)
        runtime = self.supervisor.slots[agent].runtime
        if runtime is None or not runtime.registered:
            raise ControlError("not_ready", f"agent {agent!r} is not registered", 409)
        runtime.simulate(request.room, request.participant)
        return {"simulated": agent, "room": request.room}
