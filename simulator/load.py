"""Load mode: ``--devices N`` simulated devices from one process, each with its own identity, all playing the
same inputs (typed text, audio files or a scenario), with one latency and error report at the end.

Each device is a full :class:`~simulator.client.DeviceClient` (handshake, hello, state machine, 40-frame
playback model, MCP tools, reconnect with backoff), but what is the same for every device is done once:
audio files are encoded to opus packets once and the packets shared, and downlink audio is not decoded
(nobody listens; the playback model only needs the packets).  That is what lets one core keep hundreds
of devices streaming in real time (``python -m bench.simulator``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from server.protocol.messages import ListenMode
from simulator.client import DeviceClient
from simulator.errors import SimulatorError
from simulator.identity import DeviceIdentity
from simulator.inputs import FRAME_MS, AudioSource, SilenceSource, UplinkEncoder
from simulator.metrics import Summary, percentile
from simulator.scenario import Scenario, run_scenario
from simulator.session import ConnectOptions, DeviceSession, create_client
from simulator.terminal import SilentTerminal
from simulator.turns import TurnReport

__all__ = ["EncodedSpeech", "LoadInput", "LoadReport", "derive_identity", "run_load", "stream_speech"]

TRAILING_SILENCE_MS = 1000  # after the speech in auto mode, so the server's VAD can end the utterance


def derive_identity(base: DeviceIdentity, index: int) -> DeviceIdentity:
    """Device ``index`` of a fleet: stable across runs (the server recognises the same N devices) and
    distinct, with the locally-administered MAC bit like every simulated device."""
    digest = hashlib.sha256(f"{base.client_id}/{index}".encode()).digest()
    octets = bytearray(digest[:6])
    octets[0] = (octets[0] | 0x02) & 0xFE
    return DeviceIdentity(":".join(f"{b:02x}" for b in octets), str(uuid.UUID(bytes=digest[6:22], version=4)))


@dataclass(frozen=True)
class EncodedSpeech:
    """Speech encoded once for every device: the packets, then ``TRAILING_SILENCE_MS`` of silence."""

    label: str
    packets: tuple[bytes, ...]
    speech_packets: int  # the first this many carry the speech; the rest are the trailing silence

    @classmethod
    def encode(cls, source: AudioSource, label: str, trailing_silence_ms: float = TRAILING_SILENCE_MS) -> EncodedSpeech:
        encoder = UplinkEncoder()
        speech = [encoder.encode(frame) for frame in source.frames()]
        silence = [encoder.encode(frame) for frame in SilenceSource(trailing_silence_ms).frames()]
        return cls(label, tuple(speech + silence), len(speech))


async def stream_speech(client: DeviceClient, speech: EncodedSpeech, mode: ListenMode = "auto") -> int:
    """Speak pre-encoded speech in real time (one packet per 60 ms on an absolute schedule); like
    :func:`simulator.inputs.speak`.  Returns the packets sent."""
    await client.listen_start(mode)
    start = time.monotonic()
    sent = 0
    frame_s = FRAME_MS / 1000
    last = speech.speech_packets if mode == "manual" else len(speech.packets)
    for n, packet in enumerate(speech.packets[:last]):
        delay = start + n * frame_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent += await client.send_opus(packet)
        if n == speech.speech_packets - 1:
            if mode == "manual":
                await client.listen_stop()
            else:
                client.mark_end_of_speech()
    return sent


@dataclass(frozen=True)
class LoadInput:
    kind: Literal["text", "speech"]
    text: str = ""
    speech: EncodedSpeech | None = None

    @property
    def label(self) -> str:
        return self.text if self.kind == "text" else self.speech.label if self.speech else "?"


@dataclass
class DeviceResult:
    index: int
    connected: bool = False
    connect_s: float | None = None
    reports: list[TurnReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answered: int = 0
    failed: int = 0


@dataclass
class LoadReport:
    devices: int
    results: list[DeviceResult]
    wall_s: float

    @property
    def connected(self) -> int:
        return sum(r.connected for r in self.results)

    @property
    def answered(self) -> int:
        return sum(r.answered for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.results)

    @property
    def errors(self) -> collections.Counter[str]:
        return collections.Counter(e for r in self.results for e in r.errors)

    @property
    def ok(self) -> bool:
        return self.connected == self.devices and self.failed == 0 and not self.errors

    def summary(self) -> Summary:
        summary = Summary()
        for result in self.results:
            for report in result.reports:
                summary.add(report)
        return summary

    def lines(self) -> list[str]:
        connects = [r.connect_s * 1000 for r in self.results if r.connect_s is not None]
        lines = [
            f"load: {self.devices} devices in {self.wall_s:.1f} s: {self.connected} connected "
            f"(p50 {percentile(connects, 50):.0f} ms, max {max(connects, default=math.nan):.0f} ms), "
            f"{self.answered} turns answered, {self.failed} failed",
            *self.summary().lines(),
        ]
        errors = self.errors
        if errors:
            lines.append(f"errors ({sum(errors.values())}):")
            lines += [f"  {count}× {message}" for message, count in errors.most_common(10)]
            if len(errors) > 10:
                lines.append(f"  … and {len(errors) - 10} other kinds")
        else:
            lines.append("errors: none")
        return lines


async def _play_inputs(session: DeviceSession, inputs: Sequence[LoadInput], mode: ListenMode,
                       timeout: float, result: DeviceResult) -> None:  # fmt: skip
    client = session.client
    for item in inputs:
        try:
            await session.ensure_connected()
            if item.kind == "text":
                await client.interrupt()
                await client.send_text(item.text)
            else:
                assert item.speech is not None
                await stream_speech(client, item.speech, mode)
            report = await client.wait_for_turn(timeout)
        except SimulatorError as exc:
            result.failed += 1
            result.errors.append(f"{item.label!r}: {exc}")
            continue
        result.answered += 1
        result.reports.append(report)


async def _run_device(
    index: int, options: ConnectOptions, start_at: float, inputs: Sequence[LoadInput], scenario: Scenario | None,
    repeat: int, mode: ListenMode, timeout: float,
) -> DeviceResult:  # fmt: skip
    result = DeviceResult(index)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    started = time.monotonic()
    try:
        client = await create_client(options)
        session = DeviceSession(client, SilentTerminal(), mode=mode, reply_timeout_s=timeout, reconnect_attempts=4)
        await session.start()
    except SimulatorError as exc:
        result.errors.append(f"connect: {exc}")
        return result
    result.connected = True
    result.connect_s = time.monotonic() - started
    try:
        for _ in range(repeat):
            if scenario is not None:
                for step in await run_scenario(session, scenario):
                    if step.step.action == "pause":
                        continue
                    if step.report is not None:
                        result.reports.append(step.report)
                    if step.passed:
                        result.answered += 1
                    else:
                        result.failed += 1
                        result.errors.extend(f"turn {step.step.number}: {p}" for p in step.problems)
            else:
                await _play_inputs(session, inputs, mode, timeout, result)
    finally:
        await session.close()
    return result


async def run_load(
    base: ConnectOptions,
    devices: int,
    *,
    inputs: Sequence[LoadInput] = (),
    scenario: Scenario | None = None,
    repeat: int = 1,
    ramp_s: float | None = None,
    mode: ListenMode = "auto",
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> LoadReport:
    """Run ``devices`` devices, their starts spread evenly over ``ramp_s`` (default 20 ms per device, at
    most 10 s), each playing ``inputs`` (or ``scenario``) ``repeat`` times."""
    if devices < 1:
        raise SimulatorError(f"--devices must be at least 1, got {devices}")
    if not inputs and scenario is None:
        raise SimulatorError("load mode needs inputs: --text, --file or --scenario")
    ramp = min(10.0, 0.02 * devices) if ramp_s is None else ramp_s
    t0 = time.monotonic()
    options = [
        dataclasses.replace(base, identity=derive_identity(base.identity, i), decode_audio=False, recorder=None,
                            mcp=None)
        for i in range(devices)
    ]  # fmt: skip
    tasks = [
        asyncio.create_task(
            _run_device(i, options[i], t0 + ramp * i / devices, inputs, scenario, repeat, mode, timeout),
            name=f"sim-load-{i}",
        )
        for i in range(devices)
    ]
    reporter = asyncio.create_task(_progress(tasks, progress)) if progress is not None else None
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if reporter is not None:
            reporter.cancel()
    return LoadReport(devices, list(results), time.monotonic() - t0)


async def _progress(tasks: list[asyncio.Task[DeviceResult]], say: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(5)
        done = sum(t.done() for t in tasks)
        say(f"load: {done} of {len(tasks)} devices finished")
