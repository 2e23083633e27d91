"""Device-server benchmark: uplink capacity, downlink pacing, turn overhead, idle memory, offline latency.

    python -m bench.server [--devices 300] [--tts-devices 100] [--seconds 20]

The server (``DeviceServer``, no storage: ``runtime=None``) runs in this process; the simulated devices
run in a separate process (``bench/loadgen.py``), so client work does not share the server's GIL.
Prints ``BENCH <name> <value> <unit>`` on stdout, and for each figure with a goal
``BENCH <name>_goal_met 1|0 bool``; progress goes to stderr. See bench/README.md for what each figure
means and how it is measured.

Measuring without changing server code: the bench wraps, in this process only,
``DeviceConnection.on_audio`` (frame arrival), ``UplinkStream.push``/``reset`` (samples queued for the
uplink worker), ``UplinkAnalyzer.run`` (which windows each stream has had evaluated when a run ends),
``DeviceConnection._on_text`` / ``send_audio`` (text turn arrival, frames sent), ``AudioPacer.mark_sent``
(pacer underruns), the LLM and the server's speech renderer (time spent in the LLM and in TTS + encoding).
The wrappers cost a few microseconds per call. ``--vad-tick-ms`` and ``--gc-freeze`` are experiment knobs
(defaults: as shipped).

Providers: the real ``LocalLlm`` (wrapped to time it) and ``EspeakTts`` (in the server's speech workers), and an
ASR that always hears nothing (:class:`SilentAsr`), so the uplink devices' utterances end their turns at once
and only the server's own audio path (decode, VAD) is measured. The last figure uses the real offline pipeline
(``build_pipeline()`` defaults: Whisper tiny.en, local LLM, espeak).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from server import event_loop
from server.audio.pacer import AudioPacer
from server.config import ServerSettings, Settings
from server.device.connection import DeviceConnection
from server.device.server import DeviceServer
from server.pipeline.asr import AsrProvider, WhisperAsr
from server.pipeline.llm import ChatMessage, LlmDelta, LlmProvider, LocalLlm, ToolSpec
from server.pipeline.registry import PipelineProviders, build_pipeline
from server.pipeline.speech import AHEAD, SpeechRenderer
from server.pipeline.tts import EspeakTts
from server.pipeline.uplink import UplinkAnalyzer, UplinkStream
from server.pipeline.vad import WINDOW_SAMPLES

# name → (comparison, target); a figure with a goal also gets a ``<name>_goal_met`` line.
GOALS: dict[str, tuple[str, float]] = {
    "uplink_devices": (">=", 300),
    "uplink_frame_lag_p99_ms": ("<=", 60),
    "downlink_jitter_p99_ms": ("<=", 10),
    "downlink_frames_dropped_over_40": ("<=", 0),
    "turn_overhead_ms": ("<=", 20),
    "idle_device_memory_kb": ("<=", 256),
}
FRAME_MS = 60
DEVICE_QUEUE_FRAMES = 40  # the firmware drops packets beyond 2400 ms / 60 ms of queued audio (spec §1.5)
WARMUP_S = 3.0  # uplink: streaming before the measurement window opens
# LocalLlm answers what it does not understand by repeating it ("Sorry, I can't help with that yet. I
# heard: "…"."), so a nine-sentence request gives a ten-sentence reply (~35 s of espeak speech).
STORY = (
    "Please read me a story about a keeper of the old tower by the sea. "
    "She lived alone on a small rocky island far from the coast. "
    "Every evening she climbed the long spiral stairs to the top. "
    "The wind sang through the narrow windows of the tower all night. "
    "Fishing boats passed in the dark and trusted her to guide them home. "
    "One winter a storm broke the great glass at the top of the tower. "
    "She carried candles up the stairs one by one until dawn came. "
    "The sailors saw the small flames and found the harbour safely. "
    "She still climbs the stairs every evening and watches the sea."
)

ROOT = Path(__file__).resolve().parents[1]
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str, met: bool | None = None) -> None:
    if unit in ("devices", "frames", "frames/s", "count", "bool"):
        shown = f"{value:.0f}"
    else:
        shown = f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
    print(f"BENCH {name} {shown} {unit}", flush=True)
    if name in GOALS:
        op, target = GOALS[name]
        if met is None:
            met = value >= target if op == ">=" else value <= target
        print(f"BENCH {name}_goal_met {int(met)} bool", flush=True)
        if not met:
            log(f"GOAL MISSED: {name} = {shown} {unit}, goal {op} {target:g}")


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


# ---- instrumentation ----------------------------------------------------------------------------------------


@dataclass
class TurnRecord:
    device_id: str
    arrived: float  # the ``listen detect`` text reached DeviceConnection._on_text
    first_frame: float | None = None  # the turn's first TTS frame went out (send_audio returned)
    llm_s: float = 0.0  # inside llm.stream until its first text delta
    tts_s: float | None = None  # inside tts.synthesize for the turn's first sentence


CURRENT_TURN: contextvars.ContextVar[TurnRecord | None] = contextvars.ContextVar("bench_turn", default=None)


@dataclass
class Probe:
    """What the wrappers record; each part is on only while its scenario runs."""

    uplink: bool = False
    turns: bool = False
    sends: bool = False
    tts_times: bool = False
    # uplink, per VAD stream id: (arrival, reset epoch, windows the frame completed or -1 when it was not
    # queued for VAD); and per VAD run (start, end, {stream id: (epoch its track is in, windows evaluated)})
    frames: dict[int, list[tuple[float, int, int]]] = field(default_factory=lambda: defaultdict(list))
    stream_device: dict[int, str] = field(default_factory=dict)
    runs: list[tuple[float, float, dict[int, tuple[int, int]]]] = field(default_factory=list)
    turn_records: list[TurnRecord] = field(default_factory=list)
    sent: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    pacer_underruns: int = 0
    vad_running: int = 0  # UplinkAnalyzer runs in progress (waiting for an uplink worker)
    gc_pauses: list[tuple[float, int, float]] = field(default_factory=list)  # (start, generation, seconds)
    tts_durations: list[float] = field(default_factory=list)
    synth_ends: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    asr_durations: list[float] = field(default_factory=list)
    utterances: int = 0

    def reset(self) -> None:
        self.frames.clear()
        self.stream_device.clear()
        self.runs.clear()
        self.turn_records.clear()
        self.sent.clear()
        self.pacer_underruns = 0
        self.tts_durations.clear()
        self.synth_ends.clear()
        self.asr_durations.clear()
        self.utterances = 0
        self.gc_pauses.clear()


PROBE = Probe()
# Per uplink stream id (UplinkStream has __slots__): samples pushed since the last reset, resets so far, and
# the reset epoch the last run applied.
PUSHED: dict[int, int] = {}
EPOCH: dict[int, int] = {}
APPLIED: dict[int, int] = {}


def install_probes() -> None:
    on_audio = DeviceConnection.on_audio
    on_text = DeviceConnection._on_text
    send_audio = DeviceConnection.send_audio
    push = UplinkStream.push
    reset = UplinkStream.reset
    mark_sent = AudioPacer.mark_sent
    run = UplinkAnalyzer.run

    def probed_mark_sent(self: AudioPacer, frames: int = 1) -> None:
        before = self.underruns
        mark_sent(self, frames)
        PROBE.pacer_underruns += self.underruns - before

    def probed_push(self: UplinkStream, packet: bytes, samples: int) -> None:
        push(self, packet, samples)
        PUSHED[self.id] = PUSHED.get(self.id, 0) + samples

    def probed_reset(self: UplinkStream) -> None:
        # ``listen start`` resets the stream: queued audio is dropped and offsets restart at the next run.
        reset(self)
        PUSHED[self.id] = 0
        EPOCH[self.id] = EPOCH.get(self.id, 0) + 1

    def probed_on_audio(self: DeviceConnection, packet: bytes) -> None:
        if not PROBE.uplink:
            on_audio(self, packet)
            return
        arrived = time.monotonic()
        stream = self._vad
        before = PUSHED.get(stream.id, 0)
        on_audio(self, packet)
        after = PUSHED.get(stream.id, 0)
        target = after // WINDOW_SAMPLES if after != before else -1
        PROBE.frames[stream.id].append((arrived, EPOCH.get(stream.id, 0), target))
        PROBE.stream_device[stream.id] = self.device_id

    async def probed_run(self: UplinkAnalyzer, shard: int | None = None) -> Any:
        started = time.monotonic()
        workers = self._workers if shard is None else [self._workers[shard]]
        streams = [s for w in workers for s in w.members.values()]
        for s in streams:
            if s._reset:  # this run applies it
                APPLIED[s.id] = EPOCH.get(s.id, 0)
        PROBE.vad_running += 1
        try:
            result = await run(self, shard)
        finally:
            PROBE.vad_running -= 1
        if PROBE.uplink:
            progress = {s.id: (APPLIED.get(s.id, 0), s.evaluated_samples // WINDOW_SAMPLES) for s in streams}
            PROBE.runs.append((started, time.monotonic(), progress))
        return result

    async def probed_on_text(self: DeviceConnection, text: str | bytes) -> None:
        if not (PROBE.turns and isinstance(text, str) and '"detect"' in text):
            await on_text(self, text)
            return
        record = TurnRecord(self.device_id, time.monotonic())
        PROBE.turn_records.append(record)
        token = CURRENT_TURN.set(record)  # the turn task started inside inherits this context
        try:
            await on_text(self, text)
        finally:
            CURRENT_TURN.reset(token)

    async def probed_send_audio(self: DeviceConnection, packet: bytes) -> None:
        await send_audio(self, packet)
        now = time.monotonic()
        record = CURRENT_TURN.get()
        if record is not None and record.first_frame is None:
            record.first_frame = now
        if PROBE.sends:
            PROBE.sent[self.device_id].append(now)

    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.monotonic()
        elif PROBE.uplink or PROBE.sends:
            PROBE.gc_pauses.append((gc_started[0], info["generation"], time.monotonic() - gc_started[0]))

    gc.callbacks.append(on_gc)
    UplinkStream.push = probed_push  # type: ignore[method-assign]
    UplinkStream.reset = probed_reset  # type: ignore[method-assign]
    AudioPacer.mark_sent = probed_mark_sent  # type: ignore[method-assign]
    DeviceConnection.on_audio = probed_on_audio  # type: ignore[method-assign]
    UplinkAnalyzer.run = probed_run  # type: ignore[method-assign]
    DeviceConnection._on_text = probed_on_text  # type: ignore[method-assign]
    DeviceConnection.send_audio = probed_send_audio  # type: ignore[method-assign]


class SilentAsr(AsrProvider):
    """Hears nothing, instantly: an uplink utterance ends its turn at once (no ASR/LLM/TTS load)."""

    name = "bench-silent"

    async def transcribe(self, pcm: np.ndarray, sample_rate: int = 16000, language: str | None = None) -> str:
        PROBE.utterances += 1
        return ""


class TimedAsr(AsrProvider):
    name = "bench-timed"

    def __init__(self, inner: AsrProvider) -> None:
        self.inner = inner
        if hasattr(inner, "load"):
            self.load = inner.load  # the server warms the model up at start

    async def transcribe(self, pcm: np.ndarray, sample_rate: int = 16000, language: str | None = None) -> str:
        started = time.monotonic()
        try:
            return await self.inner.transcribe(pcm, sample_rate, language)
        finally:
            PROBE.asr_durations.append(time.monotonic() - started)

    async def close(self) -> None:
        await self.inner.close()


class TimedLlm(LlmProvider):
    """The wrapped LLM, timing the turn's wait for its first text delta."""

    name = "bench-timed"

    def __init__(self, inner: LlmProvider) -> None:
        self.inner = inner

    async def stream(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> AsyncIterator[LlmDelta]:
        record = CURRENT_TURN.get()
        deltas = aiter(self.inner.stream(messages, tools))
        timing = record is not None and record.tts_s is None  # the first round of the turn only
        try:
            while True:
                started = time.monotonic()
                try:
                    delta = await anext(deltas)
                except StopAsyncIteration:
                    return
                if timing and record is not None:
                    record.llm_s += time.monotonic() - started
                    timing = not delta.text
                yield delta
        finally:
            with contextlib.suppress(Exception):
                await deltas.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.inner.close()


class TimedSpeech:
    """Wraps the server's speech renderer (the worker pool): times the turn's first sentence, and in the
    downlink run every sentence. The time includes the hand-off to the worker process and back (~1 ms)."""

    def __init__(self, inner: SpeechRenderer) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate

    async def start(self) -> None:
        await self.inner.start()

    async def render(self, text: str, *, priority: int = AHEAD) -> list[bytes]:
        started = time.monotonic()
        packets = await self.inner.render(text, priority=priority)
        took = time.monotonic() - started
        record = CURRENT_TURN.get()
        if record is not None and record.tts_s is None:
            record.tts_s = took
        if PROBE.tts_times:
            PROBE.tts_durations.append(took)
            if record is not None:
                PROBE.synth_ends[record.device_id].append(started + took)
        return packets

    async def close(self) -> None:
        await self.inner.close()


# ---- the load generator process -----------------------------------------------------------------------------


class LoadGen:
    """``python -m bench.loadgen MODE …`` in a child process, driven by lines on its stdin/stdout."""

    def __init__(self, mode: str, url: str, **options: Any) -> None:
        self.mode = mode
        self.url = url
        self.options = options
        self._out = Path(tempfile.mkstemp(prefix=f"bench-loadgen-{mode}-", suffix=".json")[1])
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None

    async def start(self) -> None:
        argv = [sys.executable, "-m", "bench.loadgen", self.mode, "--url", self.url, "--out", str(self._out)]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        self.ps = psutil.Process(self.proc.pid)

    async def expect(self, word: str, timeout: float = 300) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the {self.mode} load generator exited (code {await self.proc.wait()})")
                if line.decode().strip() == word:
                    return

    def say(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def result(self, timeout: float = 300) -> dict[str, Any]:
        await self.expect("DONE", timeout)
        assert self.proc is not None
        await self.proc.wait()
        try:
            return json.loads(self._out.read_text())
        finally:
            self._out.unlink(missing_ok=True)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._out.unlink(missing_ok=True)


class CpuWindow:
    """CPU used by this process, the load generator and everything else, over a window."""

    def __init__(self, loadgen: psutil.Process | None) -> None:
        self.me = psutil.Process()
        self.loadgen = loadgen
        self._start = self._sample()

    def _sample(self) -> tuple[float, ...]:
        mine = self.me.cpu_times()
        other = None
        if self.loadgen is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                other = self._loadgen_last = self.loadgen.cpu_times()
            other = other or getattr(self, "_loadgen_last", None)  # it has just exited: its last sample
        total = psutil.cpu_times()
        busy = sum(getattr(total, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
        # The server's worker processes (uplink decode + VAD, speech synthesis; and their espeak-ng children once
        # reaped) are children of multiprocessing's forkserver, itself a child of this process.
        workers = 0.0
        for child in self.me.children(recursive=True):
            if self.loadgen is not None and child.pid == self.loadgen.pid:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                t = child.cpu_times()
                workers += t.user + t.system + t.children_user + t.children_system
        return (
            time.monotonic(),
            mine.user + mine.system,
            mine.children_user + mine.children_system + workers,
            (other.user + other.system) if other else 0.0,
            busy,
        )

    def stop(self) -> dict[str, float]:
        t1, me1, kids1, lg1, busy1 = self._sample()
        t0, me0, kids0, lg0, busy0 = self._start
        wall = t1 - t0
        server, children = (me1 - me0) / wall * 100, (kids1 - kids0) / wall * 100
        loadgen = (lg1 - lg0) / wall * 100
        machine = (busy1 - busy0) / wall * 100
        other = machine - server - children - loadgen
        if other > 25:
            log(f"WARNING: other processes used {other:.0f}% CPU during this measurement: the figures are polluted")
        return {"wall": wall, "server": server, "children": children, "loadgen": loadgen, "other": other}


class LoopMonitor:
    """How late the event loop wakes a 5 ms sleep: what any frame or timer waits for the loop."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._task = asyncio.create_task(self._watch())
        self._window = (0.0, 0.0)

    async def _watch(self) -> None:
        while True:
            planned = time.monotonic() + 0.005
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.samples.append((now, now - planned))

    def stop(self, window: tuple[float, float]) -> None:
        self._task.cancel()
        self._window = window

    def summary(self) -> str:
        lo, hi = self._window
        late = [d * 1000 for t, d in self.samples if lo <= t < hi]
        return (
            f"event loop wake-up delay: p50 {pct(late, 50):.1f} ms, p99 {pct(late, 99):.1f} ms, "
            f"max {max(late, default=0):.0f} ms"
        )


# ---- profiling (optional) -------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` of this process for ``seconds`` (``--profile DIR``), as collapsed stacks."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str, seconds: float) -> None:
        if self.directory is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{name}.txt"
        argv = [spy, "record", "--pid", str(os.getpid()), "--duration", str(max(1, int(seconds))), "--rate", "200",
                "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"profiling the server with py-spy into {out}")

    def wait(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            self.proc = None


# ---- scenarios ----------------------------------------------------------------------------------------------


def timed_window(
    start: float, seconds: float, loadgen: psutil.Process | None, profiler: Profiler, name: str
) -> tuple[tuple[float, float], dict[str, float]]:
    """(start, end) of a measurement window of ``seconds`` from ``start``, and the CPU used in it (in a thread)."""
    time.sleep(max(0.0, start - time.monotonic()))
    profiler.start(name, seconds)
    cpu = CpuWindow(loadgen)
    opened = time.monotonic()
    time.sleep(max(0.0, opened + seconds - time.monotonic()))
    usage = cpu.stop()
    window = (opened, time.monotonic())
    profiler.wait()
    return window, usage


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


async def wait_connections(server: DeviceServer, n: int, timeout: float = 60) -> None:
    assert server.ctx is not None
    async with asyncio.timeout(timeout):
        while len(server.ctx.connections) != n:  # noqa: ASYNC110 - polling is fine here
            await asyncio.sleep(0.05)


async def wait_vad_idle(timeout: float = 120) -> None:
    """An overloaded uplink worker goes on with the backlog of a run under way when devices leave: wait for it."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while PROBE.vad_running:  # noqa: ASYNC110 - the flag is set in another thread
            await asyncio.sleep(0.05)
    if (waited := time.monotonic() - started) > 0.2:
        log(f"the VAD worker went on evaluating closed streams' backlog for {waited:.1f} s after the devices left")


async def bench_memory(server: DeviceServer, url: str, devices: int) -> None:
    log(f"idle memory: {devices} devices connect and say hello, then sit idle")
    warm = LoadGen("idle", url, devices=4)  # first connections pay for lazy imports and caches
    await warm.start()
    await warm.expect("READY")
    warm.say("CLOSE")
    await warm.result()
    await wait_connections(server, 0)
    await asyncio.sleep(0.5)
    before = rss()
    gen = LoadGen("idle", url, devices=devices)
    await gen.start()
    try:
        await gen.expect("READY")
        await wait_connections(server, devices)
        await asyncio.sleep(1.0)
        after = rss()
        gen.say("CLOSE")
        await gen.result()
    finally:
        await gen.kill()
    await wait_connections(server, 0)
    per_device = (after - before) / devices / 1024
    log(f"RSS {before / 2**20:.1f} MiB with 0 devices, {after / 2**20:.1f} MiB with {devices}")
    emit("idle_device_memory_kb", per_device, "KB")


async def bench_turns(server: DeviceServer, url: str, turns: int) -> None:
    warmup = 3
    log(f"turn overhead: {turns} text turns (+{warmup} warm-up) on an idle server, first frame then abort")
    gen = LoadGen("turns", url, turns=turns + warmup, text="hello", timeout=30)
    await gen.start()
    try:
        await gen.expect("READY")
        PROBE.reset()
        PROBE.turns = True
        gen.say("GO")
        client = await gen.result()
    finally:
        PROBE.turns = False
        await gen.kill()
    records = [r for r in PROBE.turn_records if r.first_frame is not None and r.tts_s is not None][warmup:]
    if len(records) < turns:
        log(f"WARNING: only {len(records)} of {turns} turns produced audio")
    total = [(r.first_frame - r.arrived) * 1000 for r in records]  # type: ignore[operator]
    llm = [r.llm_s * 1000 for r in records]
    tts = [r.tts_s * 1000 for r in records]  # type: ignore[operator]
    overhead = [t - a - b for t, a, b in zip(total, llm, tts, strict=True)]
    seen = [(t["first_frame"] - t["sent"]) * 1000 for t in client["turns"][warmup:] if t["first_frame"]]
    log(f"first frame after the text arrived: p50 {pct(total, 50):.1f} ms = LLM {pct(llm, 50):.2f} ms + "
        f"TTS {pct(tts, 50):.1f} ms + server {pct(overhead, 50):.2f} ms (p90 {pct(overhead, 90):.2f} ms); "
        f"device-observed p50 {pct(seen, 50):.1f} ms")  # fmt: skip
    emit("turn_overhead_ms", pct(overhead, 50), "ms")
    emit("turn_first_frame_ms", pct(total, 50), "ms")


def uplink_lags(window: tuple[float, float], observed_until: float) -> dict[str, Any]:
    """Per frame that arrived inside ``window``: arrival → end of the VAD run that evaluated its windows.

    A frame queued for VAD but never evaluated (its device left first and the queue was dropped) counts
    with the lower bound ``observed_until − arrival``; one whose audio a ``listen start`` reset dropped
    before evaluation does not count (``reset_dropped``)."""
    lo, hi = window
    lags: list[float] = []
    arrival_by_device: dict[str, list[float]] = {}
    done_by_device: dict[str, list[float | None]] = {}
    ignored = 0
    pending = 0
    reset_dropped = 0
    waits: list[float] = []  # arrival → start of the VAD run that evaluated the frame
    by_second: dict[int, list[float]] = defaultdict(list)
    runs = PROBE.runs
    for stream_id, frames in PROBE.frames.items():
        device = PROBE.stream_device[stream_id]
        arrival_by_device[device] = [t for t, _, _ in frames]
        done: list[float | None] = [None] * len(frames)
        dropped = [False] * len(frames)
        r = 0
        for i, (arrived, epoch, target) in enumerate(frames):
            if target < 0:
                continue
            while r < len(runs) and (runs[r][1] < arrived or runs[r][2].get(stream_id, (-1, -1)) < (epoch, target)):
                r += 1
            if r < len(runs):
                if runs[r][2][stream_id][0] > epoch:
                    dropped[i] = True  # reset before its windows were evaluated
                else:
                    done[i] = runs[r][1]
                    if lo <= arrived < hi:
                        waits.append((runs[r][0] - arrived) * 1000)
        done_by_device[device] = done
        for (arrived, _, target), finished, lost in zip(frames, done, dropped, strict=True):
            if not lo <= arrived < hi:
                continue
            if target < 0:
                ignored += 1
            elif lost:
                reset_dropped += 1
            else:
                pending += finished is None
                lags.append(((finished or observed_until) - arrived) * 1000)
                by_second[int(arrived - lo)].append(lags[-1])
    trend = " ".join(f"{pct(by_second[k], 99):.0f}" for k in sorted(by_second))
    return {"lags": lags, "ignored": ignored, "pending": pending, "reset_dropped": reset_dropped,
            "arrivals": arrival_by_device, "waits": waits,
            "done": done_by_device, "trend": trend}  # fmt: skip


async def uplink_run(
    server: DeviceServer, url: str, devices: int, seconds: float, profiler: Profiler, quiet: bool = False
) -> dict[str, float]:
    log(f"uplink: {devices} devices stream speech + silence in real time ({seconds:.0f} s measured)")
    gen = LoadGen("uplink", url, devices=devices, seconds=WARMUP_S + seconds + 1.5)
    await gen.start()
    try:
        await gen.expect("READY")
        await wait_connections(server, devices)
        PROBE.reset()
        PROBE.uplink = True
        monitor = LoopMonitor()
        gen.say("GO")
        # A thread times the window: an overloaded event loop would oversleep.
        measuring = asyncio.create_task(
            asyncio.to_thread(timed_window, time.monotonic() + WARMUP_S, seconds, gen.ps, profiler, "uplink")
        )
        client = await gen.result()
        window, usage = await measuring
        monitor.stop(window)
        await wait_connections(server, 0)
        await wait_vad_idle()
        observed_until = time.monotonic()
    finally:
        PROBE.uplink = False
        await gen.kill()
    found = uplink_lags(window, observed_until)
    lags = found["lags"]
    in_window = len(lags) + found["ignored"] + found["reset_dropped"]
    streaming = sum(1 for frames in PROBE.frames.values() if any(window[0] <= t < window[1] for t, _, _ in frames))
    # Device-observed: client send → on_audio, and client send → VAD done (same monotonic clock).
    recv_delays, e2e = [], []
    for device, sends in client["devices"].items():
        arrivals = found["arrivals"].get(device, [])
        done = found["done"].get(device, [])
        if len(arrivals) != len(sends):
            log(f"WARNING: {device} sent {len(sends)} frames, the server saw {len(arrivals)}")
            continue
        for sent, arrived, finished in zip(sends, arrivals, done, strict=True):
            if window[0] <= arrived < window[1]:
                recv_delays.append((arrived - sent) * 1000)
                if finished is not None:
                    e2e.append((finished - sent) * 1000)
    runs = [(s, e) for s, e, _ in PROBE.runs if window[0] <= e < window[1]]
    run_ms = [(e - s) * 1000 for s, e in runs]
    period_ms = np.diff([s for s, _ in runs]) * 1000 if len(runs) > 1 else []
    figures = {
        "devices": streaming,
        "p99": pct(lags, 99),
        "p50": pct(lags, 50),
        "fps": in_window / (window[1] - window[0]),
        "e2e_p99": pct(e2e, 99),
        "cpu": usage["server"] + usage["children"],
    }
    log(f"lag arrival→VAD done: p50 {pct(lags, 50):.1f} ms, p90 {pct(lags, 90):.1f}, p99 {pct(lags, 99):.1f}, "
        f"max {max(lags, default=float('nan')):.1f} ms; server CPU {usage['server']:.0f}% + its worker processes "
        f"{usage['children']:.0f}%")  # fmt: skip
    if quiet:
        return figures
    log(
        f"{in_window} frames in the window: {len(lags) - found['pending']} evaluated, {found['pending']} never "
        f"evaluated (device gone first; counted as lag ≥ until the end), {found['ignored']} ignored (server not "
        f"listening), {found['reset_dropped']} dropped by a listen-start reset"
    )
    log(f"lag p99 by second of the window: {found['trend']} ms")
    log(f"VAD runs: {len(runs)}, run p50 {pct(run_ms, 50):.1f} ms / p99 {pct(run_ms, 99):.1f} ms, "
        f"period p50 {pct(period_ms, 50):.1f} ms / p99 {pct(period_ms, 99):.1f} ms; a frame waits for its run "
        f"p50 {pct(found['waits'], 50):.1f} ms / p99 {pct(found['waits'], 99):.1f} ms")  # fmt: skip
    log(monitor.summary())
    log(
        f"device send → on_audio p50 {pct(recv_delays, 50):.1f} ms / p99 {pct(recv_delays, 99):.1f} ms; "
        f"send → VAD done p99 {pct(e2e, 99):.1f} ms; loadgen send lateness p99 {client['send_late_p99_ms']:.1f} ms"
    )
    log(
        f"CPU: server {usage['server']:.0f}%, load generator {usage['loadgen']:.0f}%, "
        f"everything else {usage['other']:.0f}% (of 100% per core, {psutil.cpu_count()} cores)"
    )
    log(f"{PROBE.utterances} utterances ended by the server VAD during the run (each a turn with an empty ASR)")
    log(gc_summary(window))
    return figures


def gc_summary(window: tuple[float, float]) -> str:
    pauses = [(g, d * 1000) for t, g, d in PROBE.gc_pauses if window[0] <= t < window[1]]
    full = [d for g, d in pauses if g == 2]
    return (
        f"garbage collector in the window: {len(pauses)} collections, {sum(d for _, d in pauses):.0f} ms in all; "
        f"{len(full)} full (gen 2), longest {max(full, default=0):.0f} ms"
    )


async def bench_uplink(server: DeviceServer, url: str, devices: int, seconds: float, profiler: Profiler) -> None:
    lag_goal = GOALS["uplink_frame_lag_p99_ms"][1]
    main = await uplink_run(server, url, devices, seconds, profiler)
    # "≥ 300 devices with p99 ≤ 60 ms": the device count only counts if the lag goal holds too.
    emit("uplink_devices", main["devices"], "devices", met=main["devices"] >= GOALS["uplink_devices"][1]
         and main["p99"] <= lag_goal)  # fmt: skip
    emit("uplink_frame_lag_p99_ms", main["p99"], "ms")
    emit("uplink_frame_lag_p50_ms", main["p50"], "ms")
    emit("uplink_frames_per_s", main["fps"], "frames/s")
    emit("uplink_e2e_lag_p99_ms", main["e2e_p99"], "ms")
    emit("server_cpu_percent", main["cpu"], "%")
    if main["p99"] <= lag_goal:
        return
    # Missed: how many devices does this machine hold within the lag goal? (bisection, 25-device steps)
    good, bad, step = 0, devices, 25
    while bad - good > step:
        trial = max(step, (good + bad) // 2 // step * step)
        if trial in (good, bad):
            break
        result = await uplink_run(server, url, trial, min(seconds, 8.0), Profiler(None), quiet=True)
        good, bad = (trial, bad) if result["p99"] <= lag_goal else (good, trial)
    log(f"the lag goal holds up to {good} streaming devices (fails at {bad})")
    emit("uplink_devices_within_lag_goal", good, "devices")


def jitter_and_drops(frames: Sequence[float], prebuffer: int) -> tuple[list[float], int, int]:
    """|inter-arrival − 60 ms| of the frames after the opening burst, frames a 40-frame queue played in
    real time would have dropped, and how often that queue ran dry before the last frame."""
    # The pacer sends prebuffer + 1 frames at once (the device may hold ``prebuffer`` while playing one).
    burst = prebuffer + 1
    times = np.asarray(frames, dtype=np.float64)
    jitter = list(np.abs(np.diff(times[burst - 1 :]) * 1000 - FRAME_MS)) if len(times) > burst else []
    dropped = underruns = 0
    free_at = None  # when the device will have played everything queued
    frame_s = FRAME_MS / 1000
    for at in times:
        if free_at is None or free_at <= at:
            if free_at is not None:
                underruns += 1
            free_at = at
        if (free_at - at) / frame_s > DEVICE_QUEUE_FRAMES - 1e-9:
            dropped += 1
            continue
        free_at += frame_s
    return jitter, dropped, underruns


async def bench_downlink(server: DeviceServer, url: str, devices: int, profiler: Profiler) -> None:
    spread = 3.0
    log(f"downlink: {devices} devices ask for a long story at once (starts spread over {spread:.0f} s)")
    gen = LoadGen("downlink", url, devices=devices, text=STORY, spread=spread, timeout=180)
    await gen.start()
    try:
        await gen.expect("READY")
        await wait_connections(server, devices)
        PROBE.reset()
        PROBE.turns = PROBE.sends = PROBE.tts_times = True
        monitor = LoopMonitor()
        gen.say("GO")
        profiler.start("downlink", 25)
        cpu = CpuWindow(gen.ps)
        window_start = time.monotonic()
        await gen.expect("FINISHED")
        window = (window_start, time.monotonic())
        monitor.stop(window)
        usage = cpu.stop()
        client = await gen.result()
        profiler.wait()
    finally:
        PROBE.turns = PROBE.sends = PROBE.tts_times = False
        await gen.kill()
    await wait_connections(server, 0)
    prebuffer = server.settings.server.prebuffer_frames
    jitter: list[float] = []
    server_jitter: list[float] = []
    boundary_jitter: list[float] = []  # frames sent within 4 frames after a sentence's synthesis ended
    inside_jitter: list[float] = []  # the others: pacing inside a sentence
    dropped = device_underruns = server_underruns = frames = 0
    first_audio = []
    alerts = 0
    burst = prebuffer + 1
    for device, result in client["devices"].items():
        j, d, u = jitter_and_drops(result["frames"], prebuffer)
        sent = PROBE.sent.get(device, [])
        if len(sent) == len(result["frames"]):
            ends = np.asarray(PROBE.synth_ends.get(device, []))
            for k, value in enumerate(j):
                i = burst + k  # the frame whose inter-arrival this is
                lo, hi = sent[max(0, i - 4)], sent[i]
                near = bool(np.any((ends > lo) & (ends <= hi)))
                (boundary_jitter if near else inside_jitter).append(value)
        jitter += j
        dropped += d
        device_underruns += u
        frames += len(result["frames"])
        alerts += len(result["alerts"])
        if result["frames"]:
            first_audio.append((result["frames"][0] - result["sent"]) * 1000)
        at_server = jitter_and_drops(PROBE.sent.get(device, []), prebuffer)
        server_jitter += at_server[0]
        server_underruns += at_server[2]
    played = frames * FRAME_MS / 1000 / max(1, len(client["devices"]))
    log(f"{frames} frames to {len(client['devices'])} devices ({played:.1f} s of speech each), {alerts} alerts")
    log(
        f"jitter p50 {pct(jitter, 50):.1f} ms, p90 {pct(jitter, 90):.1f}, p99 {pct(jitter, 99):.1f}, max "
        f"{max(jitter, default=float('nan')):.0f} ms; at the server's send: p99 {pct(server_jitter, 99):.1f} ms"
    )
    log(
        f"jitter p99 at sentence boundaries (≤ 4 frames after a synthesis ended) {pct(boundary_jitter, 99):.1f} ms "
        f"({len(boundary_jitter)} frames, {sum(x > 10 for x in boundary_jitter)} over 10 ms); inside sentences "
        f"{pct(inside_jitter, 99):.1f} ms ({len(inside_jitter)} frames, "
        f"{sum(x > 10 for x in inside_jitter)} over 10 ms)"
    )
    log(
        f"device queue ran dry {device_underruns} times mid-reply ({server_underruns} by the server's send times; "
        f"the server's pacer re-anchored {PROBE.pacer_underruns} times); "
        f"first audio p50 {pct(first_audio, 50):.0f} ms / max {max(first_audio, default=float('nan')):.0f} ms"
    )
    log(
        f"espeak per sentence: p50 {pct(PROBE.tts_durations, 50) * 1000:.0f} ms, p90 "
        f"{pct(PROBE.tts_durations, 90) * 1000:.0f} ms, p99 {pct(PROBE.tts_durations, 99) * 1000:.0f} ms "
        f"({len(PROBE.tts_durations)} sentences)"
    )
    log(f"CPU: server {usage['server']:.0f}%, its worker processes {usage['children']:.0f}%, load generator "
        f"{usage['loadgen']:.0f}%, everything else {usage['other']:.0f}%")  # fmt: skip
    log(gc_summary(window))
    log(monitor.summary())
    emit("downlink_devices", len(client["devices"]), "devices")
    emit("downlink_jitter_p99_ms", pct(jitter, 99), "ms")
    emit("downlink_jitter_p50_ms", pct(jitter, 50), "ms")
    emit("downlink_jitter_inside_sentences_p99_ms", pct(inside_jitter, 99), "ms")
    emit("downlink_frames_dropped_over_40", dropped, "frames")
    emit("downlink_underruns", device_underruns, "count")


async def bench_offline(settings: Settings, turns: int) -> None:
    log("offline pipeline: loading Whisper, local LLM, espeak (build_pipeline defaults)")
    inner = build_pipeline()
    if isinstance(inner.asr, WhisperAsr):
        await inner.asr.load()
    providers = PipelineProviders(asr=TimedAsr(inner.asr), llm=inner.llm, tts=inner.tts)
    server = DeviceServer(settings, providers=providers)
    await server.start()
    warmup = 1
    try:
        gen = LoadGen("offline", server.websocket_url(), turns=turns + warmup, timeout=60)
        await gen.start()
        try:
            await gen.expect("READY")
            PROBE.reset()
            gen.say("GO")
            client = await gen.result()
        finally:
            await gen.kill()
    finally:
        await server.stop()
        await providers.close()
    measured = client["turns"][warmup:]
    latency = [(t["first_frame"] - t["last_speech_sent"]) * 1000 for t in measured if t["first_frame"]]
    heard = {t["stt"] for t in measured}
    asr = [d * 1000 for d in PROBE.asr_durations[warmup:]]
    log(
        f"heard {heard}; first audio after the last speech packet: {', '.join(f'{x:.0f}' for x in latency)} ms; "
        f"Whisper p50 {pct(asr, 50):.0f} ms"
    )
    if len(latency) < turns:
        log(f"WARNING: only {len(latency)} of {turns} spoken turns were answered")
    emit("offline_pipeline_first_audio_ms", pct(latency, 50), "ms")
    emit("vad_min_silence_ms", settings.server.vad_min_silence_ms, "ms")


# ---- main ---------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    install_probes()
    settings = Settings(server=ServerSettings(host="127.0.0.1", port=0, http_port=0, vad_tick_ms=args.vad_tick_ms))
    providers = PipelineProviders(asr=SilentAsr(), llm=TimedLlm(LocalLlm()), tts=EspeakTts())
    profiler = Profiler(Path(args.profile) if args.profile else None)
    only = set(args.only.split(",")) if args.only else None
    server = DeviceServer(settings, providers=providers)
    await server.start()
    await server.ready()  # measure the steady state, not the workers' start-up (~1.5 s of backlog to drain)
    assert server.ctx is not None
    server.ctx.speech = TimedSpeech(server.ctx.speech)
    if args.gc_freeze:  # experiment: what the server would gain from freezing its start-up heap
        gc.collect()
        gc.freeze()
        log(f"experiment: gc.freeze() after start-up ({gc.get_freeze_count()} objects frozen)")
    url = server.websocket_url()
    log(f"server at {url} ({psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    try:
        if only is None or "memory" in only:
            await bench_memory(server, url, args.memory_devices)
        if only is None or "turns" in only:
            await bench_turns(server, url, args.turns)
        if only is None or "uplink" in only:
            await bench_uplink(server, url, args.devices, args.seconds, profiler)
        if only is None or "downlink" in only:
            await bench_downlink(server, url, args.tts_devices, profiler)
    finally:
        await server.stop()
    if only is None or "offline" in only:
        await bench_offline(settings, args.offline_turns)
    log("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=300, help="uplink: devices streaming at once")
    parser.add_argument("--tts-devices", type=int, default=100, help="downlink: devices receiving TTS at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="uplink: measured seconds")
    parser.add_argument("--memory-devices", type=int, default=500, help="idle memory: connected devices")
    parser.add_argument("--turns", type=int, default=50, help="turn overhead: text turns")
    parser.add_argument("--offline-turns", type=int, default=5, help="offline pipeline: spoken turns")
    parser.add_argument("--only", help="comma-separated subset of: memory,turns,uplink,downlink,offline")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the uplink and downlink windows into DIR")
    parser.add_argument("--vad-tick-ms", type=int, default=ServerSettings().vad_tick_ms,
                        help="experiment: the server's VAD tick (server.vad_tick_ms)")  # fmt: skip
    parser.add_argument("--gc-freeze", action="store_true", help="experiment: gc.freeze() the server's start-up heap")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    event_loop.run(run(args))  # the loop `xiaozhi server` runs on


if __name__ == "__main__":
    main()
