"""In-memory rooms and their agent dispatches.

A room holds a set of dispatch records (``Room.agentDispatches`` in ``pkg/rtc/room.go``). This
module keeps the bookkeeping only; launching jobs is the server's business. It has no I/O and
no clock of its own: IDs and the wall time are injected.

Invariants:

* Creating a room that exists changes nothing and launches nothing.
* A new room gets the dispatches it was created with, or, when there are none, the default
  unnamed dispatch ``{agent_name: ""}`` (automatic dispatch, reference §3.1). That includes
  rooms created implicitly by CreateDispatch.
* A deleted dispatch leaves its room at once; its record lives on with whoever holds it (the
  termination of its jobs runs after the removal, as on the real server).
* Rooms never close by themselves: there are no participants, so the empty and departure
  timeouts are stored and reported but never fire.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lksup.devserver.model import DispatchSpec, Job, NotFound, RoomInfo

#: ``room.empty_timeout`` and ``room.departure_timeout`` defaults of the real server (seconds).
DEFAULT_EMPTY_TIMEOUT = 300
DEFAULT_DEPARTURE_TIMEOUT = 20


@dataclass
class Dispatch:
    """One agent dispatch of a room; ``jobs`` grows as launches succeed (states as launched)."""

    id: str
    room: str
    spec: DispatchSpec
    created_at: int
    jobs: list[Job] = field(default_factory=list)


@dataclass
class Room:
    """A room and its dispatches, in creation order."""

    info: RoomInfo
    dispatches: dict[str, Dispatch] = field(default_factory=dict)


@dataclass(frozen=True)
class RoomOptions:
    """The ``CreateRoomRequest`` fields the dev server honours."""

    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    agents: Sequence[DispatchSpec] = ()


class Rooms:
    """The room registry of one server."""

    def __init__(self, new_id: Callable[[str], str], wall_time: Callable[[], float]) -> None:
        self._new_id = new_id
        self._wall_time = wall_time
        self._rooms: dict[str, Room] = {}

    def get(self, name: str) -> Room | None:
        """The room called ``name``, if any."""
        return self._rooms.get(name)

    def require(self, name: str) -> Room:
        """The room called ``name``.

        Raises:
            NotFound: no such room.
        """
        room = self._rooms.get(name)
        if room is None:
            raise NotFound("requested room does not exist")
        return room

    def create(self, name: str, options: RoomOptions) -> tuple[Room, list[Dispatch]]:
        """Create ``name`` unless it exists; return it and the dispatches to launch."""
        existing = self._rooms.get(name)
        if existing is not None:
            return existing, []
        now = self._wall_time()
        info = RoomInfo(
            sid=self._new_id("RM_"),
            name=name,
            empty_timeout=options.empty_timeout or DEFAULT_EMPTY_TIMEOUT,
            departure_timeout=options.departure_timeout or DEFAULT_DEPARTURE_TIMEOUT,
            max_participants=options.max_participants,
            creation_time=int(now),
            creation_time_ms=int(now * 1000),
            metadata=options.metadata,
            turn_password=secrets.token_urlsafe(32)[:43],
        )
        room = Room(info)
        self._rooms[name] = room
        specs = list(options.agents) or [DispatchSpec()]
        return room, [self.add_dispatch(room, spec) for spec in specs]

    def add_dispatch(self, room: Room, spec: DispatchSpec) -> Dispatch:
        """Record a new dispatch in ``room``."""
        dispatch = Dispatch(
            id=self._new_id("AD_"),
            room=room.info.name,
            spec=spec,
            created_at=int(self._wall_time() * 1e9),
        )
        room.dispatches[dispatch.id] = dispatch
        return dispatch

    def remove_dispatch(self, room_name: str, dispatch_id: str) -> Dispatch:
        """Take a dispatch out of its room.

        Raises:
            NotFound: no such room or dispatch.
        """
        room = self.require(room_name)
        dispatch = room.dispatches.pop(dispatch_id, None)
        if dispatch is None:
            raise NotFound("dispatch ID not found")
        return dispatch

    def delete(self, name: str) -> Room:
        """Remove a room with its dispatches.

        Raises:
            NotFound: no such room.
        """
        room = self.require(name)
        del self._rooms[name]
        return room

    def list(self, names: Iterable[str] = ()) -> list[Room]:
        """All rooms, or those named in ``names``, in creation order."""
        wanted = set(names)
        return [room for name, room in self._rooms.items() if not wanted or name in wanted]
