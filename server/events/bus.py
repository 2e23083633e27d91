"""The event bus (S16): writes happen here, off the real-time path, in order per session.

``publish`` never blocks and never raises for a backend outage. Each session is bound to one shard
(hash of its id), and a shard handles its events one batch at a time, so a session's events are
written in the order they were published — unlike a shared worker pool, which reorders. Runs of
messages are written as one batch (one transaction) for throughput.

When a write fails because PostgreSQL or S3 is unreachable, it is retried with backoff; if it still
fails, the events — and every later event of the same sessions — go to the on-disk spool, and the
replayer writes them back in order once the backend answers. Events that can never be written
(bad data) are kept in the spool's dead-letter folder with the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from server.events.spool import Spool, SpoolFull
from server.events.types import AddMessage, Event, SaveAudio, SessionEnd, SessionStart
from server.storage.db import is_transient
from server.storage.errors import StorageUnavailable
from server.storage.models import NewMessage

log = logging.getLogger(__name__)
_STOP = object()
_Item = tuple[int, Event]  # (publish number, event)


class EventHandlers(Protocol):
    """What the bus calls; raising a transient error (StorageUnavailable, connection errors) means "retry"."""

    async def add_messages(self, messages: Sequence[NewMessage]) -> None: ...

    async def start_session(self, event: SessionStart) -> None: ...

    async def end_session(self, event: SessionEnd) -> None: ...

    async def save_audio(self, event: SaveAudio) -> None: ...


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, StorageUnavailable) or is_transient(exc)


@dataclass
class BusStats:
    published: int = 0
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    dead: int = 0
    lost: int = 0  # only when the spool itself is full or unwritable; logged as errors
    retries: int = 0


class EventBus:
    def __init__(
        self,
        handlers: EventHandlers,
        spool_dir: Path,
        *,
        shards: int = 4,
        queue_size: int = 10_000,
        batch_size: int = 500,
        retries: int = 3,
        retry_backoff_s: float = 0.2,
        replay_interval_s: float = 2.0,
    ) -> None:
        self.handlers = handlers
        self.spool = Spool(spool_dir)
        self.batch_size = batch_size
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.replay_interval_s = replay_interval_s
        self.stats = BusStats()
        self._queues: list[asyncio.Queue[object]] = [
            asyncio.Queue(maxsize=max(1, queue_size // shards)) for _ in range(shards)
        ]
        self._inflight: Counter[str] = Counter()
        # session → publish number of its oldest event on the spool. An event of such a session that is
        # newer must follow it onto the spool; an older one (queued before a queue overflow) goes first.
        self._spooled_from: dict[str, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._current: list[list[_Item]] = [[] for _ in range(shards)]
        self._replayer: asyncio.Task[None] | None = None
        self._replay_lock = asyncio.Lock()
        self._wake_replayer = asyncio.Event()
        self._closed = False
        # Events spooled by an earlier run keep their sessions on the spool path until replayed.
        for path in self.spool.pending():
            with contextlib.suppress(ValueError):
                for event in self.spool.read(path):
                    self._spooled_from.setdefault(event.session_id, -1)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._worker(i), name=f"event-shard-{i}") for i in range(len(self._queues))
        ]
        self._replayer = asyncio.create_task(self._replay_loop(), name="event-replayer")
        if len(self.spool):
            log.warning("%d events waiting in the spool from an earlier run; replaying", len(self.spool))
            self._wake_replayer.set()

    async def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, write what is queued (up to ``timeout``), spool the rest, try one last replay."""
        if self._closed:
            return
        self._closed = True
        for queue in self._queues:
            await queue.put(_STOP)
        _, pending = await asyncio.wait(self._workers, timeout=timeout) if self._workers else (set(), set())
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for index in range(len(self._queues)):
            self._spool_leftovers(index)
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if len(self.spool):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.replay_once(), timeout=max(1.0, timeout / 3))
        if len(self.spool):
            log.warning("%d events stay in the spool %s for the next start", len(self.spool), self.spool.directory)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything published so far is written or spooled."""
        await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)

    # ---- publishing -----------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Hand an event to the bus. Never blocks; raises InvalidInput only for data that can never be stored."""
        event.validate()
        self.stats.published += 1
        item = (self.stats.published, event)  # the publish number orders spooled against queued events
        session = event.session_id
        if self._closed or session in self._spooled_from:
            self._to_spool([item])
            return
        queue = self._queues[zlib.crc32(session.encode()) % len(self._queues)]
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("event queue full; spooling events of session %s to disk", session)
            self._to_spool([item])
            return
        self._inflight[session] += 1

    @property
    def queued(self) -> int:
        return sum(q.qsize() for q in self._queues)

    # ---- workers --------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        queue = self._queues[index]
        while True:
            item = await queue.get()
            batch: list[_Item] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
                while len(batch) < self.batch_size and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)  # type: ignore[arg-type]
            self._current[index] = batch
            try:
                if batch:
                    await self._process(batch)
            except Exception:  # a bug must not stop the shard: keep the batch for an operator
                log.exception("event shard %d failed on a batch of %d events", index, len(batch))
                for _, event in batch:
                    self.stats.dead += 1
                    self.spool.dead_letter(event, "internal error while writing; see the server log")
            finally:
                self._current[index] = []
                for _, event in batch:
                    self._inflight[event.session_id] -= 1
                    if self._inflight[event.session_id] <= 0:
                        del self._inflight[event.session_id]
                    queue.task_done()
                if stop:
                    queue.task_done()
            if stop:
                return

    async def _process(self, batch: list[_Item]) -> None:
        for unit in _units(batch):
            # An event newer than its session's oldest spooled event must follow it, or order would break.
            held = [it for it in unit if it[0] > self._spooled_from.get(it[1].session_id, it[0])]
            live = [it for it in unit if it not in held]
            self._to_spool(held)
            if live:
                await self._write_with_retries(live)

    async def _write_with_retries(self, unit: list[_Item]) -> None:
        for attempt in range(self.retries + 1):
            try:
                await self._dispatch([event for _, event in unit])
                self.stats.written += len(unit)
                return
            except Exception as exc:
                if not is_retryable(exc):
                    await self._isolate_failure(unit, exc)
                    return
                if attempt == self.retries:
                    log.warning("backend unavailable (%s); spooling %d events to disk", exc, len(unit))
                    self._to_spool(unit)
                    return
                self.stats.retries += 1
                await asyncio.sleep(self.retry_backoff_s * (2**attempt))

    async def _isolate_failure(self, unit: list[_Item], exc: Exception) -> None:
        """A batch failed for a non-transient reason: write its events one by one, dead-letter the bad ones."""
        if len(unit) == 1:
            self.stats.dead += 1
            self.spool.dead_letter(unit[0][1], f"{type(exc).__name__}: {exc}")
            return
        for item in unit:
            await self._write_with_retries([item])

    async def _dispatch(self, unit: Sequence[Event]) -> None:
        first = unit[0]
        if isinstance(first, AddMessage):
            await self.handlers.add_messages([e.message for e in unit])  # type: ignore[union-attr]
        elif isinstance(first, SessionStart):
            await self.handlers.start_session(first)
        elif isinstance(first, SessionEnd):
            await self.handlers.end_session(first)
        else:
            await self.handlers.save_audio(first)

    def _to_spool(self, items: Sequence[_Item]) -> None:
        if not items:
            return
        try:
            self.spool.write([event for _, event in items])
        except (TypeError, ValueError) as exc:  # not serialisable: can never be replayed either
            for _, event in items:
                self.stats.dead += 1
                self.spool.dead_letter(event, f"cannot be spooled: {exc}")
            return
        except (SpoolFull, OSError) as exc:
            self.stats.lost += len(items)
            log.error("%d events LOST: cannot spool them: %s", len(items), exc)
            return
        self.stats.spooled += len(items)
        for number, event in items:
            self._spooled_from[event.session_id] = min(number, self._spooled_from.get(event.session_id, number))
        self._wake_replayer.set()

    def _spool_leftovers(self, index: int) -> None:
        """After a cancelled shutdown: whatever a shard still held goes to disk (writes are idempotent)."""
        leftovers = list(self._current[index])
        queue = self._queues[index]
        while not queue.empty():
            item = queue.get_nowait()
            if item is not _STOP:
                leftovers.append(item)  # type: ignore[arg-type]
        self._current[index] = []
        if leftovers:
            self._to_spool(leftovers)

    # ---- replay ---------------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancel of close().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.replay_interval_s):
                    await self._wake_replayer.wait()
            self._wake_replayer.clear()
            if self._spooled_from or len(self.spool):
                await asyncio.sleep(self.replay_interval_s)  # give the backend a moment after a failure
                try:
                    await self.replay_once()
                except Exception:  # the loop must survive anything; the files stay on disk
                    log.exception("spool replay failed")

    async def replay_once(self) -> int:
        """Write spooled events back in publish order; stop at the first sign the backend is still down."""
        async with self._replay_lock:
            replayed = 0
            while True:
                paths = self.spool.pending()
                if not paths:
                    self._spooled_from.clear()
                    return replayed
                path = paths[0]
                try:
                    events = self.spool.read(path)
                except ValueError as exc:
                    self.stats.dead += 1
                    self.spool.dead_letter(path, str(exc))
                    continue
                if any(self._inflight.get(e.session_id) for e in events):
                    return replayed  # queued events of these sessions were published earlier; let them go first
                for numbered in _units(list(enumerate(events))):
                    unit = [event for _, event in numbered]
                    try:
                        await self._dispatch(unit)
                    except Exception as exc:
                        if is_retryable(exc):
                            return replayed  # the file stays; writes are idempotent, so a redo is safe
                        if not await self._replay_one_by_one(unit, exc):
                            return replayed
                    else:
                        self.stats.replayed += len(unit)
                        replayed += len(unit)
                self.spool.remove(path)

    async def _replay_one_by_one(self, unit: list[Event], exc: Exception) -> bool:
        """Dead-letter the events of a failed unit that can never be written; False if the backend went away."""
        if len(unit) == 1:
            self.stats.dead += 1
            self.spool.dead_letter(unit[0], f"{type(exc).__name__}: {exc}")
            return True
        for event in unit:
            try:
                await self._dispatch([event])
                self.stats.replayed += 1
            except Exception as inner:
                if is_retryable(inner):
                    return False
                self.stats.dead += 1
                self.spool.dead_letter(event, f"{type(inner).__name__}: {inner}")
        return True


def _units(items: list[_Item]) -> list[list[_Item]]:
    """Split into write units keeping order: runs of messages become one batch; other events stand alone."""
    units: list[list[_Item]] = []
    for item in items:
        if isinstance(item[1], AddMessage) and units and isinstance(units[-1][0][1], AddMessage):
            units[-1].append(item)
        else:
            units.append([item])
    return units
