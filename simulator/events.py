"""What a simulated device observes, as typed events, and the fan-out that delivers them.

One design for every consumer (a test, the console UI, a load generator): ``client.events()`` returns an
:class:`EventStream`, an async iterator over frozen dataclasses.  Each stream has its own bounded queue
that drops its *oldest* events when the consumer falls behind (counted in ``stream.overflowed``), so a
stalled UI can never make the device itself lag or grow memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from simulator.errors import SimulatorError

if TYPE_CHECKING:
    from simulator.turns import TurnReport

__all__ = [
    "Alert",
    "AudioPlayed",
    "Disconnected",
    "Emotion",
    "Event",
    "EventHub",
    "EventStream",
    "ProtocolError",
    "Sentence",
    "ServerCommand",
    "StateChanged",
    "SttText",
    "ToolCalled",
    "TtsState",
    "TurnFinished",
]

DeviceStateName = Literal["idle", "connecting", "listening", "speaking"]


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: DeviceStateName
    new: DeviceStateName


@dataclass(frozen=True, slots=True)
class SttText:
    """What the server recognised (the user's bubble)."""

    text: str


@dataclass(frozen=True, slots=True)
class Emotion:
    emotion: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class TtsState:
    state: Literal["start", "stop"]


@dataclass(frozen=True, slots=True)
class Sentence:
    """A subtitle: ``state`` "start" when its audio begins (the firmware shows it), "end" after it."""

    text: str
    state: Literal["start", "end"] = "start"


@dataclass(frozen=True, slots=True, eq=False)
class AudioPlayed:
    """A downlink packet started playing. ``pcm`` is int16 mono at ``sample_rate`` (None if decoding is off)."""

    packet: bytes
    pcm: np.ndarray | None
    sample_rate: int


@dataclass(frozen=True, slots=True)
class ToolCalled:
    name: str
    arguments: dict[str, Any]
    result_text: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class Alert:
    status: str
    message: str
    emotion: str


@dataclass(frozen=True, slots=True)
class ServerCommand:
    """``system`` (e.g. reboot) or ``goodbye``: the device closes its audio channel."""

    command: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Something the server sent that the device had to ignore; the connection goes on."""

    message: str


@dataclass(frozen=True, slots=True)
class TurnFinished:
    report: TurnReport


@dataclass(frozen=True, slots=True)
class Disconnected:
    code: int | None
    reason: str


Event = (
    StateChanged | SttText | Emotion | TtsState | Sentence | AudioPlayed | ToolCalled | Alert | ServerCommand
    | ProtocolError | TurnFinished | Disconnected
)  # fmt: skip
E = TypeVar("E")
_END: Any = object()  # queued by close() so a waiting consumer wakes up


@dataclass(eq=False)
class EventStream:
    """One subscriber's view. Iterate with ``async for``; close (or use ``async with``) when done."""

    _hub: EventHub
    maxsize: int = 1000
    overflowed: int = 0
    _queue: asyncio.Queue[Event] = field(init=False)
    _closed: bool = False

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue()

    def _put(self, event: Event) -> None:
        if self._queue.qsize() >= self.maxsize:
            self._queue.get_nowait()
            self.overflowed += 1
        self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is _END:
            raise StopAsyncIteration
        return event

    async def next(
        self, kind: type[E] | tuple[type, ...] = object, *, where: Callable[[Any], bool] | None = None,
        timeout: float = 10.0,
    ) -> E:  # fmt: skip
        """The next event of ``kind`` (matching ``where``), skipping others; SimulatorError on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._queue.get()
                    if event is _END:
                        raise SimulatorError("event stream closed")
                    if isinstance(event, kind) and (where is None or where(event)):
                        return event  # type: ignore[return-value]
        except TimeoutError:
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise SimulatorError(f"no {names} event within {timeout:g} s") from None

    def drain(self) -> list[Event]:
        """Everything queued now, without waiting."""
        events = []
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                event = self._queue.get_nowait()
                if event is _END:
                    break
                events.append(event)
        return events

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._streams.discard(self)
            self._queue.put_nowait(_END)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    def __init__(self) -> None:
        self._streams: set[EventStream] = set()

    def subscribe(self, maxsize: int = 1000) -> EventStream:
        stream = EventStream(self, maxsize)
        self._streams.add(stream)
        return stream

    def publish(self, event: Event) -> None:
        for stream in self._streams:
            stream._put(event)
