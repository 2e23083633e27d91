"""Every device's uplink, decoded and run through Silero VAD in one worker process.

The device server's event loop only receives frames and keeps their opus packets; decoding (50 µs a packet) and
VAD (about 55 µs per 32 ms window, batched) for hundreds of streams happen in a separate process, so they neither
hold the loop nor compete with it for the GIL (measured before: 300 streaming devices needed 1.4 cores in one
process, the loop 84% busy). The loop hands the worker every stream's new packets once per tick and gets back
per stream: VAD events, how far the VAD has evaluated, packets libopus rejected, and the audio level.

For every end of speech the report also carries the segment's PCM (with ``SEGMENT_PAD_S`` on each side), decoded
from the uninterrupted stream, so the speech recognizer does not decode the same packets a second time (that
cost the loop's process 0.2 core at 300 streaming devices).

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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from server.audio.decoder import InvalidOpusPacket, OpusDecoder
from server.pipeline.vad import SAMPLE_RATE, BatchedVadStream, SileroModel, VadBatcher, VadConfig, VadEvent

log = logging.getLogger(__name__)

__all__ = ["SEGMENT_PAD_S", "StreamReport", "UplinkAnalyzer", "UplinkStream", "decode_packets"]

STOP_TIMEOUT_S = 5.0
SEGMENT_PAD_S = 0.2  # audio kept on each side of a speech segment (for ASR, and when the segment is saved)
_PAD = int(SEGMENT_PAD_S * SAMPLE_RATE)
_KEEP_BEFORE = _PAD + SAMPLE_RATE // 2  # decoded audio kept before what the VAD has evaluated (a segment starts
# up to ``VadConfig.window`` windows before the window that decided it)
MAX_SEGMENT_S = 61.0  # decoded audio kept per stream at most (a device talking without a pause)
REPLY_TIMEOUT_S = 10.0  # a worker that takes longer for one tick is hung (a tick's work is tens of milliseconds)


@dataclass(slots=True)
class StreamReport:
    """What one run found for one stream."""

    events: list[VadEvent] = field(default_factory=list)
    evaluated: int = 0  # VAD position after the run: audio before it has produced all its events
    bad_packets: int = 0  # packets libopus rejected (counted as silence)
    level: float | None = None  # RMS of the audio decoded in this run; None if none was
    restarted: bool = False  # the worker was restarted: the stream starts over at offset 0
    # one per ``speech_end`` event, in order: int16 PCM of [start - pad, end + pad) as far as it was kept
    segments: list[np.ndarray] = field(default_factory=list)


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


class _WorkerStream:
    """A stream in the worker: its decoder, its VAD, and the decoded audio a coming segment may need."""

    __slots__ = ("chunks", "decoded", "decoder", "speech_from", "vad")

    def __init__(self, decoder: OpusDecoder, vad: BatchedVadStream) -> None:
        self.decoder = decoder
        self.vad = vad
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (offset, pcm), in order
        self.speech_from: int | None = None  # start of the segment under way
        self.decoded = 0  # samples decoded since the start (or reset)

    def reset(self) -> None:
        self.vad.reset()
        self.chunks.clear()
        self.speech_from = None
        self.decoded = 0

    def keep(self, pcm: np.ndarray) -> None:
        self.chunks.append((self.decoded, pcm))
        self.decoded += len(pcm)

    def segment(self, start: int, end: int) -> np.ndarray:
        """PCM of [start - pad, end + pad), as far as it is kept."""
        lo, hi = start - _PAD, end + _PAD
        parts = [pcm[max(0, lo - at) : max(0, hi - at)] for at, pcm in self.chunks if at < hi and at + len(pcm) > lo]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def trim(self) -> None:
        evaluated = self.vad.evaluated_samples
        keep_from = max(evaluated - _KEEP_BEFORE, self.decoded - int(MAX_SEGMENT_S * SAMPLE_RATE))
        if self.speech_from is not None:
            keep_from = min(keep_from, self.speech_from - _PAD)
        chunks = self.chunks
        while chunks and chunks[0][0] + len(chunks[0][1]) <= keep_from:
            chunks.popleft()


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
            stream.reset()
        if not packets:
            continue
        pcm, report.bad_packets = _decode(stream.decoder, packets)
        stream.keep(pcm)
        stream.vad.push(pcm)
        report.level = _rms(pcm)
    for vad_id, events in batcher.run().items():
        stream_id = by_vad_id.get(vad_id)
        if stream_id is None:
            continue
        report, stream = reports[stream_id], streams[stream_id]
        report.events = events
        for event in events:
            if event.kind == "speech_start":
                stream.speech_from = event.start
            else:
                assert event.end is not None
                report.segments.append(stream.segment(event.start, event.end))
                stream.speech_from = None
    for stream_id, report in reports.items():
        stream = streams[stream_id]
        report.evaluated = stream.vad.evaluated_samples
        stream.trim()
    return reports


def _rms(pcm: np.ndarray) -> float:
    if not len(pcm):
        return 0.0
    x = pcm.astype(np.float32)
    return float(np.sqrt(np.dot(x, x) / len(x)))


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


class _Worker:
    """One worker process and the pipe to it (created on first use, replaced when lost), and on the loop's side
    the streams it serves."""

    def __init__(self, index: int, model_path: str | None, reply_timeout_s: float) -> None:
        self.index = index
        self.model_path = model_path
        self.reply_timeout_s = reply_timeout_s
        self.members: dict[int, UplinkStream] = {}  # open streams this worker serves
        self.opened: list[UplinkStream] = []  # ... not yet announced to the process
        self.closed: list[int] = []  # stream ids to forget
        self.running = False  # a run is waiting for the process
        self.process: Any = None
        self._conn: Connection | None = None
        self._pipe_lock = threading.Lock()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("forkserver")  # no fork of a threaded process
        parent, child = ctx.Pipe()
        name = f"xiaozhi-uplink-{self.index}"
        process = ctx.Process(target=_serve, args=(child, self.model_path), name=name, daemon=True)
        process.start()
        child.close()
        self.process, self._conn = process, parent

    def _ensure(self) -> Connection:
        if self._conn is None:
            self._spawn()
            assert self._conn is not None
            if self._conn.recv() != "ready":
                raise RuntimeError("the uplink worker did not start")
        return self._conn

    def start(self) -> None:
        with self._pipe_lock:
            self._ensure()

    def exchange(self, request: Any) -> Any:
        """Send one request, wait for its reply (blocking: called in a thread)."""
        with self._pipe_lock:
            conn = self._ensure()
            conn.send(request)
            if not conn.poll(self.reply_timeout_s):
                raise TimeoutError(f"no answer within {self.reply_timeout_s:g} s")
            return conn.recv()

    def stop(self) -> None:
        with self._pipe_lock:  # a run under way (its task may have been cancelled) finishes with the pipe first
            process, conn = self.process, self._conn
            self.process = self._conn = None
            if conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(None)
                conn.close()
            if process is not None:
                process.join(STOP_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
                    process.join()


class UplinkAnalyzer:
    """``open``/``close`` streams, ``push`` packets to them, and ``await run()`` once per tick.

    ``workers`` processes share the streams (each new stream goes to the one with the fewest), so decoding and VAD
    use as many cores as there are workers. ``run(shard)`` serves one worker's streams, ``run()`` all of them at
    once; the device server runs each shard on its own tick, staggered, so the workers do not all want the CPU at
    the same moment. At most one run per shard at a time. A lost worker is replaced and only its streams start over.
    """

    def __init__(
        self,
        config: VadConfig | None = None,
        model_path: str | Path | None = None,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"need at least one uplink worker, got {workers}")
        self.config = config or VadConfig()
        path = str(model_path) if model_path is not None else None
        self._workers = [_Worker(i, path, reply_timeout_s) for i in range(workers)]
        self._worker_of: dict[int, _Worker] = {}  # open stream id → the worker serving it
        self._next_id = 1
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._worker_of)

    @property
    def shards(self) -> int:
        """How many workers (``run(shard)`` takes 0 … shards-1)."""
        return len(self._workers)

    def open(self, config: VadConfig | None = None) -> UplinkStream:
        stream = UplinkStream(self._next_id, config or self.config)
        self._next_id += 1
        worker = min(self._workers, key=lambda w: len(w.members))
        worker.members[stream.id] = stream
        worker.opened.append(stream)
        self._worker_of[stream.id] = worker
        return stream

    def close(self, stream: UplinkStream) -> None:
        stream.closed = True
        stream._packets = []
        worker = self._worker_of.pop(stream.id, None)
        if worker is not None:
            del worker.members[stream.id]
            worker.closed.append(stream.id)

    # -- the workers' life --

    async def start(self) -> None:
        """Start the workers now (each loads the VAD model), so the first device does not wait for them."""
        await asyncio.gather(*(asyncio.to_thread(w.start) for w in self._workers))

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self._workers))

    # -- one tick --

    async def run(self, shard: int | None = None) -> dict[int, StreamReport]:
        """Send the streams' new packets (and opens, closes, resets) to one worker, or to all; return the reports."""
        if shard is not None:
            return await self._run(self._workers[shard])
        reports: dict[int, StreamReport] = {}
        for part in await asyncio.gather(*(self._run(w) for w in self._workers)):
            reports.update(part)
        return reports

    async def _run(self, worker: _Worker) -> dict[int, StreamReport]:
        if worker.running:
            raise RuntimeError(f"UplinkAnalyzer.run() is already running for worker {worker.index}")
        opened = [(s.id, s.config) for s in worker.opened if not s.closed]
        closed, worker.opened, worker.closed = worker.closed, [], []
        items = []
        sent = []
        for stream in worker.members.values():
            if stream._packets or stream._reset:
                items.append((stream.id, stream._reset, stream._packets))
                stream._reset_sent = stream._reset
                stream._reset = False
                stream._packets = []
                sent.append(stream)
        if not (opened or closed or items):
            return {}
        worker.running = True
        try:
            reply = await asyncio.to_thread(worker.exchange, (opened, closed, items))
            if isinstance(reply, tuple):
                raise RuntimeError(f"uplink worker failed: {reply[1]}")
        except (EOFError, OSError, RuntimeError) as exc:  # OSError includes TimeoutError (a hung worker)
            log.error("uplink worker %d lost (%s); starting a new one, its streams start over", worker.index, exc)
            return await self._restart(worker)
        finally:
            worker.running = False
            for stream in sent:
                stream._reset_sent = False
        for stream_id, report in reply.items():
            stream = worker.members.get(stream_id)
            if stream is not None and not stream._reset:
                stream.evaluated_samples = report.evaluated
        return reply

    async def _restart(self, worker: _Worker) -> dict[int, StreamReport]:
        self.restarts += 1
        await asyncio.to_thread(worker.stop)
        worker.opened = list(worker.members.values())
        worker.closed = []
        reports = {}
        for stream in worker.members.values():
            stream._packets = []
            stream._reset = False
            stream.evaluated_samples = 0
            reports[stream.id] = StreamReport(restarted=True)
        return reports

    @property
    def pids(self) -> list[int | None]:
        """Each worker's process id (None: not started)."""
        return [w.process.pid if w.process is not None else None for w in self._workers]

    @property
    def pid(self) -> int | None:
        """The first worker's process id (None: not started)."""
        return self.pids[0]
