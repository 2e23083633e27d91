"""One small API for background work (as Anki's operations): run a coroutine as a task on the GUI's
asyncio loop (qasync), report success or failure through callbacks, count what is busy.

Failures never escape as tracebacks: they go to one error handler (the view shows a banner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Jobs:
    def __init__(
        self,
        on_error: Callable[[str, BaseException], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # The GUI loop, given explicitly: Qt slots call run() from outside any running coroutine.
        self.loop = loop or asyncio.get_event_loop()
        self.on_error = on_error
        self.on_busy_changed: Callable[[int], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._named: dict[str, asyncio.Task[Any]] = {}

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def run(
        self,
        what: str,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[T], None] | None = None,
        *,
        on_failed: Callable[[BaseException], None] | None = None,
        replace: bool = False,
    ) -> asyncio.Task[T]:
        """Start ``coro``; ``replace`` cancels a still-running job of the same name (e.g. an older search)."""
        if replace and what in self._named and not self._named[what].done():
            self._named[what].cancel()
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        self._named[what] = task
        self._changed()

        def finished(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if self._named.get(what) is t:
                del self._named[what]
            self._changed()
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
                if on_failed is not None:
                    on_failed(exc)
                if self.on_error is not None:
                    self.on_error(what, exc)
                return
            if on_done is not None:
                try:
                    on_done(t.result())
                except Exception as cb_exc:  # a view bug must not kill the loop; report it like a failure
                    log.exception("%s: result handler failed", what)
                    if self.on_error is not None:
                        self.on_error(what, cb_exc)

        task.add_done_callback(finished)
        return task

    def _changed(self) -> None:
        if self.on_busy_changed is not None:
            self.on_busy_changed(len(self._tasks))

    def named(self, what: str) -> asyncio.Task[Any] | None:
        return self._named.get(what)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def call_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """CPU work (decoding, encoding, zipping) off the GUI thread."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def describe_error(exc: BaseException) -> str:
    """One line for the banner: what failed, never a traceback."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "…"
