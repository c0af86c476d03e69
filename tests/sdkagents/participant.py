"""A test participant that talks to a voice agent through a real LiveKit room, as a user's
client would, and records what it observes.

``join`` connects with the ``livekit`` rtc package and publishes a microphone track that sends
silence until ``Participant.speak`` plays a WAV into it (at real-time pace, then silence again,
so the agent's VAD sees the speech end). ``Participant.trace`` is the normalised record of what
a user would notice, in arrival order, with no ids, sids or timestamps. A conversation with
``tests/sdkagents/voice_agent.py``::

    ("agent_joined", "PARTICIPANT_KIND_AGENT")            # a participant of kind AGENT joined
    ("agent_attribute", "lk.agent.name=voice-agent")      # lk.agent.name and test.* attributes
    ("agent_attribute", "test.accepted_by=request_fnc")
    ("agent_track", "audio roomio_audio")                 # its track, subscribed
    ("agent_audio", "sound")                              # non-silent frames after a silence
    ("agent_transcript", "Hello from the test agent.")    # final lk.transcription segments
    ("user_audio", "speech.wav")                          # this participant started speaking
    ("user_transcript", "what time is it")                # published by the agent for us
    ("agent_audio", "sound")
    ("agent_transcript", "You said: what time is it.")

``Participant.wait_for`` is the awaitable condition on that trace. ``run_conversation`` is the
whole flow (join, explicit dispatch, greeting, speech, reply) for any worker runtime under test.
"""

from __future__ import annotations

import wave
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import numpy as np
from livekit import api, rtc

from tests.conftest import FIXTURES

SPEECH = FIXTURES / "speech.wav"
IDENTITY = "test-user"
TRANSCRIPTION_TOPIC = "lk.transcription"
AGENT_NAME_ATTRIBUTE = "lk.agent.name"
TRANSCRIBED_TRACK_ATTRIBUTE = "lk.transcribed_track_id"
FINAL_ATTRIBUTE = "lk.transcription_final"

SAMPLE_RATE = 48000
FRAME_MS = 20
SOUND_PEAK = 1000  # int16 peak above which a received frame counts as sound
SILENCE_TO_REARM_S = 0.5  # this much silence ends an "agent_audio: sound" run

Event = tuple[str, str]


class ConversationStalled(Exception):
    """An expected observation did not come in time; the message holds the trace so far."""


def token(api_key: str, api_secret: str, room: str, identity: str = IDENTITY) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(api_key, api_secret).with_identity(identity).with_grants(grants).to_jwt()


def http_url(url: str) -> str:
    return url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)


@asynccontextmanager
async def server_api(url: str, api_key: str, api_secret: str) -> AsyncIterator[api.LiveKitAPI]:
    lkapi = api.LiveKitAPI(http_url(url), api_key, api_secret)
    try:
        yield lkapi
    finally:
        with anyio.CancelScope(shield=True):
            await lkapi.aclose()


def load_speech(path: Path) -> list[rtc.AudioFrame]:
    """The WAV as ``FRAME_MS`` frames at ``SAMPLE_RATE`` (mono 16-bit input)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(f"{path}: want mono 16-bit PCM")
        rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
    source = rtc.AudioFrame(pcm, rate, 1, len(pcm) // 2)
    resampler = rtc.AudioResampler(rate, SAMPLE_RATE, num_channels=1)
    samples = np.concatenate(
        [
            np.frombuffer(frame.data, dtype=np.int16)
            for frame in [*resampler.push(source), *resampler.flush()]
        ]
    )
    step = SAMPLE_RATE * FRAME_MS // 1000
    samples = np.pad(samples, (0, -len(samples) % step))
    return [
        rtc.AudioFrame(samples[i : i + step].tobytes(), SAMPLE_RATE, 1, step)
        for i in range(0, len(samples), step)
    ]


def _silence() -> rtc.AudioFrame:
    return rtc.AudioFrame.create(SAMPLE_RATE, 1, SAMPLE_RATE * FRAME_MS // 1000)


def _peak(frame: rtc.AudioFrame) -> int:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.int32)
    return int(np.abs(samples).max()) if samples.size else 0


def _is_agent(participant: rtc.RemoteParticipant) -> bool:
    return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


def _watched(key: str) -> bool:
    return key == AGENT_NAME_ATTRIBUTE or key.startswith("test.")


class Participant:
    """What one participant observed; its conditions are waits on ``trace``."""

    def __init__(self, room: rtc.Room, tg: anyio.abc.TaskGroup) -> None:
        self.room = room
        self.trace: list[Event] = []
        self._tg = tg
        self._changed = anyio.Event()
        self._attributes: dict[str, dict[str, str]] = {}
        self._queued: deque[rtc.AudioFrame] = deque()
        self._mic_sid = ""

    def record(self, event: str, value: str) -> None:
        self.trace.append((event, value))
        self._changed.set()
        self._changed = anyio.Event()

    def count(self, event: str, value: str | None = None) -> int:
        return sum(1 for e, v in self.trace if e == event and (value is None or v == value))

    async def wait_for(self, event: str, value: str | None = None, *, count: int = 1) -> None:
        """Until ``trace`` holds ``count`` ``event`` entries (with ``value`` if given)."""
        while True:
            changed = self._changed
            if self.count(event, value) >= count:
                return
            await changed.wait()

    async def expect(self, what: str, event: str, *, count: int = 1, timeout: float) -> None:
        """``wait_for`` under ``timeout``; ``ConversationStalled`` (with the trace) if it fails."""
        with anyio.move_on_after(timeout):
            await self.wait_for(event, count=count)
            return
        raise ConversationStalled(f"no {what} within {timeout} s; observed: {self.trace}")

    def speak(self, path: Path = SPEECH) -> None:
        """Play ``path`` into the microphone after what is queued; silence follows."""
        self.record("user_audio", path.name)
        self._queued.extend(load_speech(path))

    # -- room events (called on the event loop by the rtc SDK) --

    def on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if not _is_agent(participant):
            return
        self.record("agent_joined", rtc.ParticipantKind.Name(participant.kind))
        self.on_attributes({}, participant)

    def on_attributes(self, _changed: dict[str, str], participant: rtc.Participant) -> None:
        if not isinstance(participant, rtc.RemoteParticipant) or not _is_agent(participant):
            return
        seen = self._attributes.setdefault(participant.identity, {})
        for key, value in sorted(participant.attributes.items()):
            if _watched(key) and seen.get(key) != value:
                seen[key] = value
                self.record("agent_attribute", f"{key}={value}")

    def on_track(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if not _is_agent(participant):
            return
        kind = "audio" if track.kind == rtc.TrackKind.KIND_AUDIO else "video"
        self.record("agent_track", f"{kind} {publication.name}")
        if kind == "audio":
            self._tg.start_soon(self._listen, track)

    def on_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        self._tg.start_soon(self._read_transcript, reader, sender)

    # -- tasks --

    async def _listen(self, track: rtc.Track) -> None:
        """Records ``agent_audio: sound`` at each start of sound after enough silence."""
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE)
        quiet_s, in_sound = 0.0, False
        try:
            async for event in stream:
                if _peak(event.frame) >= SOUND_PEAK:
                    quiet_s = 0.0
                    if not in_sound:
                        in_sound = True
                        self.record("agent_audio", "sound")
                else:
                    quiet_s += event.frame.duration
                    if quiet_s >= SILENCE_TO_REARM_S:
                        in_sound = False
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_transcript(self, reader: rtc.TextStreamReader, sender: str) -> None:
        try:
            text = await reader.read_all()
        finally:
            reader.close()
        attributes = reader.info.attributes or {}
        if attributes.get(FINAL_ATTRIBUTE) != "true":
            return  # interim segments
        mine = sender == self.room.local_participant.identity or (
            bool(self._mic_sid) and attributes.get(TRANSCRIBED_TRACK_ATTRIBUTE) == self._mic_sid
        )
        self.record("user_transcript" if mine else "agent_transcript", text.strip())

    async def _microphone(self, source: rtc.AudioSource) -> None:
        silence = _silence()
        try:
            while True:
                frame = self._queued.popleft() if self._queued else silence
                await source.capture_frame(frame)  # paced: blocks while the source queue is full
        finally:
            with anyio.CancelScope(shield=True):
                await source.aclose()

    async def publish_microphone(self) -> None:
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await self.room.local_participant.publish_track(track, options)
        self._mic_sid = publication.sid
        self._tg.start_soon(self._microphone, source)


@asynccontextmanager
async def join(url: str, access_token: str) -> AsyncIterator[Participant]:
    """Connects, publishes the microphone (silence), and leaves on exit."""
    room = rtc.Room()
    async with anyio.create_task_group() as tg:
        participant = Participant(room, tg)
        room.on("participant_connected", participant.on_participant)
        room.on("participant_attributes_changed", participant.on_attributes)
        room.on("track_subscribed", participant.on_track)
        room.register_text_stream_handler(TRANSCRIPTION_TOPIC, participant.on_text)
        try:
            await room.connect(url, access_token)
            for present in list(room.remote_participants.values()):
                participant.on_participant(present)
            await participant.publish_microphone()
            yield participant
        finally:
            with anyio.CancelScope(shield=True):
                tg.cancel_scope.cancel()
                await room.disconnect()


async def run_conversation(
    url: str,
    api_key: str,
    api_secret: str,
    agent_name: str,
    room: str,
    *,
    step_timeout: float = 15.0,
) -> list[Event]:
    """Join ``room``, dispatch ``agent_name`` to it (explicit dispatch), wait for its greeting,
    say the speech fixture, wait for the user transcript and the reply, leave and delete the
    room; return the trace.

    Raises:
        ConversationStalled: a step saw nothing within ``step_timeout``.
    """
    async with server_api(url, api_key, api_secret) as lkapi:
        try:
            async with join(url, token(api_key, api_secret, room)) as participant:
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
                )
                await participant.expect("greeting", "agent_transcript", timeout=step_timeout)
                participant.speak(SPEECH)
                await participant.expect("user transcript", "user_transcript", timeout=step_timeout)
                await participant.expect("reply", "agent_transcript", count=2, timeout=step_timeout)
        except* ConversationStalled as group:  # out of join's task group, as documented
            raise group.exceptions[0] from None
        # the call is over: the agent's job ends with the room (it would wait ~20 s otherwise)
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
    return list(participant.trace)
