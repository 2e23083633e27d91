"""The event loop the ``xiaozhi`` commands (and the server bench) run on: uvloop where it is installed.

uvloop's libuv transports and scheduling cost less per received WebSocket frame than the standard loop's, which is
what the device server spends its loop time on (hundreds of devices × 16 frames a second). The desktop console runs
on Qt's loop (qasync) instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency; the standard loop works too
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like ``asyncio.run``, on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
