from __future__ import annotations

import asyncio

from server.live.feed import LiveEvent, LiveFeed


async def test_every_subscriber_gets_events_in_order_and_device_filters_apply() -> None:
    feed = LiveFeed("srv-1")
    everything = feed.subscribe()
    only_a = feed.subscribe(device_id="a")
    for i in range(3):
        feed.emit("stt", "a", "s1", text=f"a{i}")
        feed.emit("stt", "b", "s2", text=f"b{i}")
    assert [e.data["text"] for e in everything.drain()] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    got = [await asyncio.wait_for(only_a.get(), 1) for _ in range(3)]
    assert [e.data["text"] for e in got] == ["a0", "a1", "a2"] and got[0].server == "srv-1"


async def test_slow_subscriber_loses_the_oldest_and_never_blocks_the_publisher() -> None:
    feed = LiveFeed()
    slow = feed.subscribe(maxsize=5)
    for i in range(100):
        feed.emit("level", "a", "s", rms=i)
    assert [e.data["rms"] for e in slow.drain()] == [95, 96, 97, 98, 99]
    assert slow.dropped == 95


async def test_closed_subscription_stops_receiving_and_relays_see_local_events() -> None:
    feed = LiveFeed()
    relayed: list[LiveEvent] = []
    feed.add_relay(relayed.append)
    sub = feed.subscribe()
    sub.close()
    feed.emit("connect", "a", "s")
    feed.publish(LiveEvent("connect", "b", "s"), relay=False)
    assert sub.drain() == [] and feed.subscriber_count == 0
    assert [e.device_id for e in relayed] == ["a"]


def test_events_round_trip_through_json() -> None:
    event = LiveEvent("tool_call", "aa:bb", "s", {"name": "self.audio_speaker.set_volume", "args": {"v": 3}})
    assert LiveEvent.from_json(event.to_json()) == event
