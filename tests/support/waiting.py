from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll ``condition`` until it is true; fail the test with TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the condition is plain state, there is no event to await
            await asyncio.sleep(interval)
