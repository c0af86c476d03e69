"""A livekit-agents (1.8.x) voice agent written the way users write theirs, with fake STT, LLM
and TTS so it needs no cloud keys.

The silero VAD is loaded in prewarm. The fake STT hears ``TRANSCRIPT`` in every speech segment
the VAD cuts (it is not streaming, so the SDK wraps it in ``stt.StreamAdapter`` with the
session's VAD); the fake LLM answers ``You said: <last user message>.``; the fake TTS speaks a
tone whose length follows the text. On joining, the agent greets with ``GREETING``.

Run it with ``python voice_agent.py start`` and LIVEKIT_URL / LIVEKIT_API_KEY /
LIVEKIT_API_SECRET in the environment; AGENT_NAME overrides the agent name (explicit dispatch).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Never

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    Agent,
    AgentSession,
    APIConnectOptions,
    JobContext,
    JobProcess,
    JobRequest,
    LanguageCode,
    NotGivenOr,
    WorkerOptions,
    cli,
    llm,
    stt,
    tts,
    utils,
)
from livekit.plugins import silero

GREETING = "Hello from the test agent."
TRANSCRIPT = "what time is it"
INSTRUCTIONS = "You are a test agent. Repeat what the user said."

SAMPLE_RATE = 24000
TONE_HZ = 440.0
SECONDS_PER_CHARACTER = 0.05


def reply_to(user_text: str) -> str:
    """What the fake LLM answers to the last user message."""
    return f"You said: {user_text}."


class FakeSTT(stt.STT[Never]):
    """Hears ``TRANSCRIPT`` in any speech segment."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language=LanguageCode("en"), text=TRANSCRIPT)],
        )


class FakeLLM(llm.LLM[Never]):
    """Answers ``reply_to(<last user message>)``."""

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, object]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class FakeLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        users = [m for m in self.chat_ctx.messages() if m.role == "user"]
        heard = (users[-1].text_content or "") if users else ""
        request_id = utils.shortuuid("fake_llm_")
        for word in reply_to(heard).split(" "):  # streamed word by word, like a real LLM
            delta = llm.ChoiceDelta(role="assistant", content=word + " ")
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))


class FakeTTS(tts.TTS[Never]):
    """Speaks a 440 Hz tone, ``SECONDS_PER_CHARACTER`` per character of text."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return FakeChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class FakeChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid("fake_tts_"),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        samples = int(SAMPLE_RATE * SECONDS_PER_CHARACTER * max(len(self.input_text), 1))
        amplitude = 8000
        tone = (
            round(amplitude * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE))
            for i in range(samples)
        )
        output_emitter.push(struct.pack(f"<{samples}h", *tone))
        output_emitter.flush()


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


async def on_request(req: JobRequest) -> None:
    await req.accept(attributes={"test.accepted_by": "request_fnc"})


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session: AgentSession[None] = AgentSession(
        stt=FakeSTT(), llm=FakeLLM(), tts=FakeTTS(), vad=ctx.proc.userdata["vad"]
    )
    await session.start(agent=Agent(instructions=INSTRUCTIONS), room=ctx.room)
    session.say(GREETING)


if __name__ == "__main__":
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            prewarm_fnc=prewarm,
            request_fnc=on_request,
            agent_name=os.environ.get("AGENT_NAME", "voice-agent"),
        )
    )
