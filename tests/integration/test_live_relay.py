from __future__ import annotations

from server.config import DatabaseSettings
from server.live.feed import LiveFeed
from server.live.pg_relay import PgLiveRelay
from tests.support.waiting import wait_until


async def test_events_of_one_server_reach_consoles_of_another(db: DatabaseSettings) -> None:
    server_a, console = LiveFeed("server-a"), LiveFeed("console")
    relay_a = PgLiveRelay(db, server_a)
    relay_console = PgLiveRelay(db, console, publish=False)
    await relay_a.start()
    await relay_console.start()
    try:
        await wait_until(lambda: relay_a.connected.is_set() and relay_console.connected.is_set())
        seen = console.subscribe()
        own = server_a.subscribe()
        server_a.emit("connect", "aa:bb", "s1", client_id="c")
        server_a.emit("level", "aa:bb", "s1", rms=10.0)  # high-rate: stays local
        server_a.emit("stt", "aa:bb", "s1", text="你好" * 3000)  # too big for NOTIFY: sent slim
        await wait_until(lambda: relay_console.received >= 2)
        events = seen.drain()
        assert [(e.kind, e.server) for e in events] == [("connect", "server-a"), ("stt", "server-a")]
        assert events[1].data == {"truncated": True}
        assert [e.kind for e in own.drain()] == ["connect", "level", "stt"], "no echo of our own events"
    finally:
        await relay_a.stop()
        await relay_console.stop()
