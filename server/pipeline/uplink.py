"""Every device's uplink, decoded and run through Silero VAD in one worker process.

The device server's event loop only receives frames and keeps their opus packets; decoding (50 µs a packet) and
VAD (about 55 µs per 32 ms window, batched) for hundreds of streams happen in a separate process, so they neither
hold the loop nor compete with it for the GIL (measured before: 300 streaming devices needed 1.4 cores in one
process, the loop 84% busy). The loop hands the worker every stream's new packets once per tick and gets back
per stream: VAD events, how far the VAD has evaluated, packets libopus rejected, and the audio level.

Offsets are samples at 16 kHz since the stream was opened or reset; the loop counts them from the packets' TOC
bytes, the worker from decoding, and a packet libopus rejects counts as silence of its TOC length, so both
scales stay equal. If the worker dies it is started again and every stream reports ``restarted``: its scale
starts over at 0, as after a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from server.audio.decoder import InvalidOpusPacket, OpusDecoder
from server.pipeline.vad import SAMPLE_RATE, BatchedVadStream, SileroModel, VadBatcher, VadConfig, VadEvent

log = logging.getLogger(__name__)

__all__ = ["StreamReport", "UplinkAnalyzer", "UplinkStream", "decode_packets"]

STOP_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 10.0  # a worker that takes longer for one tick is hung (a tick's work is tens of milliseconds)


@dataclass(slots=True)
class StreamReport:
    """What one run found for one stream."""

    events: list[VadEvent] = field(default_factory=list)
    evaluated: int = 0  # VAD position after the run: audio before it has produced all its events
    bad_packets: int = 0  # packets libopus rejected (counted as silence)
    level: float | None = None  # RMS of the audio decoded in this run; None if none was
    restarted: bool = False  # the worker was restarted: the stream starts over at offset 0


class UplinkStream:
    """One device's uplink, on the loop side: ``push`` packets, ``reset`` to start the offsets over."""

    __slots__ = ("_packets", "_reset", "_reset_sent", "closed", "config", "evaluated_samples", "id")

    def __init__(self, stream_id: int, config: VadConfig) -> None:
        self.id = stream_id
        self.config = config
        self._packets: list[tuple[bytes, int]] = []
        self._reset = False  # a reset waits for the next run
        self._reset_sent = False  # ... or is in the run under way
        self.evaluated_samples = 0
        self.closed = False

    def push(self, packet: bytes, samples: int) -> None:
        """Queue a packet that decodes to ``samples`` samples at 16 kHz (from its TOC) for the next run."""
        if self.closed:
            raise RuntimeError(f"uplink stream {self.id} is closed")
        self._packets.append((packet, samples))

    def reset(self) -> None:
        """Forget queued audio and VAD state; offsets restart at 0 with the next packet."""
        self._packets = []
        self._reset = True

    @property
    def reset_pending(self) -> bool:
        """A reset has not been through a run yet: ``evaluated_samples`` still counts the old scale."""
        return self._reset or self._reset_sent


# ---- the worker process ---------------------------------------------------------------------------------------


@dataclass
class _WorkerStream:
    decoder: OpusDecoder
    vad: BatchedVadStream


def _serve(conn: Connection, model_path: str | None) -> None:
    """The worker's loop: one request in, one reply out, until ``None`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server handles Ctrl-C and stops us
    batcher = VadBatcher(SileroModel(model_path))
    streams: dict[int, _WorkerStream] = {}
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            conn.send(_handle(request, batcher, streams))
        except Exception:
            conn.send(("error", traceback.format_exc(limit=5)))


def _handle(
    request: tuple[list[tuple[int, VadConfig]], list[int], list[tuple[int, bool, list[tuple[bytes, int]]]]],
    batcher: VadBatcher,
    streams: dict[int, _WorkerStream],
) -> dict[int, StreamReport]:
    opened, closed, items = request
    for stream_id in closed:
        stream = streams.pop(stream_id, None)
        if stream is not None:
            batcher.close(stream.vad)
    for stream_id, config in opened:
        streams[stream_id] = _WorkerStream(OpusDecoder(SAMPLE_RATE), batcher.open(config))
    reports: dict[int, StreamReport] = {}
    by_vad_id: dict[int, int] = {}
    for stream_id, reset, packets in items:
        stream = streams.get(stream_id)
        if stream is None:
            continue
        report = reports[stream_id] = StreamReport()
        by_vad_id[stream.vad.id] = stream_id
        if reset:
            stream.vad.reset()
        if not packets:
            continue
        pcm, report.bad_packets = _decode(stream.decoder, packets)
        stream.vad.push(pcm)
        report.level = float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2))) if len(pcm) else 0.0
    for vad_id, events in batcher.run().items():
        stream_id = by_vad_id.get(vad_id)
        if stream_id is not None:
            reports[stream_id].events = events
    for stream_id, report in reports.items():
        report.evaluated = streams[stream_id].vad.evaluated_samples
    return reports


def _decode(decoder: OpusDecoder, packets: list[tuple[bytes, int]]) -> tuple[np.ndarray, int]:
    parts = []
    bad = 0
    for packet, samples in packets:
        try:
            pcm = decoder.decode(packet)
        except InvalidOpusPacket:
            bad += 1
            pcm = np.zeros(samples, dtype=np.int16)
        if len(pcm) != samples:  # keep the loop's count (from the TOC) and ours equal
            pcm = np.resize(pcm, samples) if len(pcm) > samples else np.pad(pcm, (0, samples - len(pcm)))
        parts.append(pcm)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), bad


def decode_packets(
    packets: Sequence[bytes], sample_rate: int = SAMPLE_RATE, warmup: Sequence[bytes] = ()
) -> np.ndarray:
    """A stretch of one stream's packets → int16 PCM (rejected packets are skipped).

    ``warmup``: the packets just before the stretch; decoded first and dropped, so the decoder's state is that
    of the stream rather than a cold start.
    """
    decoder = OpusDecoder(sample_rate)
    for packet in warmup:
        with contextlib.suppress(InvalidOpusPacket):
            decoder.decode(packet)
    parts = []
    for packet in packets:
        with contextlib.suppress(InvalidOpusPacket):
            parts.append(decoder.decode(packet))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


# ---- the loop side -------------------------------------------------------------------------------------------


class UplinkAnalyzer:
    """``open``/``close`` streams, ``push`` packets to them, and ``await run()`` once per tick (one at a time)."""

    def __init__(
        self,
        config: VadConfig | None = None,
        model_path: str | Path | None = None,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
    ) -> None:
        self.config = config or VadConfig()
        self.reply_timeout_s = reply_timeout_s
        self.model_path = str(model_path) if model_path is not None else None
        self._streams: dict[int, UplinkStream] = {}
        self._opened: list[UplinkStream] = []
        self._closed: list[int] = []
        self._next_id = 1
        self._process: Any = None
        self._conn: Connection | None = None
        self._running = False
        self._pipe_lock = threading.Lock()
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, config: VadConfig | None = None) -> UplinkStream:
        stream = UplinkStream(self._next_id, config or self.config)
        self._next_id += 1
        self._streams[stream.id] = stream
        self._opened.append(stream)
        return stream

    def close(self, stream: UplinkStream) -> None:
        stream.closed = True
        stream._packets = []
        if self._streams.pop(stream.id, None) is not None:
            self._closed.append(stream.id)

    # -- the worker's life --

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("forkserver")  # no fork of a threaded process
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child, self.model_path), name="xiaozhi-uplink", daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent

    def _ensure_worker(self) -> Connection:
        if self._conn is None:
            self._spawn()
            assert self._conn is not None
            if self._conn.recv() != "ready":
                raise RuntimeError("the uplink worker did not start")
        return self._conn

    async def start(self) -> None:
        """Start the worker now (it loads the VAD model), so the first device does not wait for it."""
        await asyncio.to_thread(self._start_worker)

    def _start_worker(self) -> None:
        with self._pipe_lock:
            self._ensure_worker()

    def _exchange(self, request: Any) -> Any:
        with self._pipe_lock:
            conn = self._ensure_worker()
            conn.send(request)
            if not conn.poll(self.reply_timeout_s):
                raise TimeoutError(f"no answer within {self.reply_timeout_s:g} s")
            return conn.recv()

    def _stop_worker(self) -> None:
        with self._pipe_lock:  # a run under way (its task may have been cancelled) finishes with the pipe first
            self._stop_worker_locked()

    def _stop_worker_locked(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            conn.close()
        if process is not None:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop_worker)

    # -- one tick --

    async def run(self) -> dict[int, StreamReport]:
        """Send every stream's new packets (and opens, closes, resets) to the worker; return its reports."""
        if self._running:
            raise RuntimeError("UplinkAnalyzer.run() is already running")
        self._running = True
        opened = [(s.id, s.config) for s in self._opened if not s.closed]
        self._opened = []
        closed, self._closed = self._closed, []
        items = []
        sent = []
        for stream in self._streams.values():
            if stream._packets or stream._reset:
                items.append((stream.id, stream._reset, stream._packets))
                stream._reset_sent = stream._reset
                stream._reset = False
                stream._packets = []
                sent.append(stream)
        try:
            reply = await asyncio.to_thread(self._exchange, (opened, closed, items))
            if isinstance(reply, tuple):
                raise RuntimeError(f"uplink worker failed: {reply[1]}")
        except (EOFError, OSError, RuntimeError) as exc:  # OSError includes TimeoutError (a hung worker)
            log.error("uplink worker lost (%s); starting a new one, every stream starts over", exc)
            return await self._restart()
        finally:
            self._running = False
            for stream in sent:
                stream._reset_sent = False
        for stream_id, report in reply.items():
            stream = self._streams.get(stream_id)
            if stream is not None and not stream._reset:
                stream.evaluated_samples = report.evaluated
        return reply

    async def _restart(self) -> dict[int, StreamReport]:
        self.restarts += 1
        await asyncio.to_thread(self._stop_worker)
        self._opened = list(self._streams.values())
        self._closed = []
        reports = {}
        for stream in self._streams.values():
            stream._packets = []
            stream._reset = False
            stream.evaluated_samples = 0
            reports[stream.id] = StreamReport(restarted=True)
        return reports

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None
