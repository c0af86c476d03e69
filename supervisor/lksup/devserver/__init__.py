"""The embedded LiveKit dev server: the agent worker protocol and the dispatch API, no media.

It lets lksup (and tests) run without a LiveKit deployment, and behaves like the single-node
livekit-server v1.13.5 as /work/shared/reference/livekit-agent-protocol.md describes it: the
same handshake, dispatch rules, deadlines and failure modes (sockets dropped without a close
frame, jobs dropped rather than queued). Modules, bottom up:

* ``model``: values and job-state transitions (pure);
* ``dispatch``: the affinity gate, the weighted pick and the time budget (pure);
* ``auth``: verifying access tokens, signing job tokens;
* ``codec``: protobuf of the worker channel (and the Job/Room/AgentDispatch converters);
* ``rooms``: in-memory rooms and dispatch records;
* ``http``: h11 + websockets' sans-I/O protocol over anyio streams;
* ``workers``: one worker connection; ``registry``: the pools of registered workers;
* ``launcher``: launching jobs, offering them to workers, terminating them;
* ``twirp``: the Twirp endpoints;
* ``server``: ``DevServer``, tying it together; ``main``: ``serve`` for the CLI.

Known deviations from the real server are listed in ``server``'s docstring.
"""

from __future__ import annotations

from lksup.devserver.codec import TraceEntry
from lksup.devserver.main import serve
from lksup.devserver.model import DispatchSpec
from lksup.devserver.rooms import RoomOptions
from lksup.devserver.server import DevServer
from lksup.devserver.workers import WorkerInfo

__all__ = ["DevServer", "DispatchSpec", "RoomOptions", "TraceEntry", "WorkerInfo", "serve"]
