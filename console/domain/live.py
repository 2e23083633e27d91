"""Live devices as the console shows them, built from LiveFeed events (no Qt): state, protocol, codec,
counters, a ring of recent audio levels per device, and the live transcript."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.live.feed import LiveEvent

HISTORY = 300  # level points per device (the scrolling waveform)
TRANSCRIPT_LINES = 200


@dataclass
class DeviceLive:
    device_id: str
    session_id: str
    state: str = "connecting"
    connected: bool = True
    protocol_version: int | None = None
    codec: str = ""
    connected_at: float = field(default_factory=time.time)
    counters: dict[str, int] = field(
        default_factory=lambda: {"stt": 0, "tts": 0, "tool_calls": 0, "errors": 0, "frames_in": 0, "frames_out": 0}
    )
    levels: np.ndarray = field(default_factory=lambda: np.zeros(HISTORY, np.float32))
    level_pos: int = 0
    last_level: float = 0.0
    speech: bool = False
    transcript: deque[str] = field(default_factory=lambda: deque(maxlen=TRANSCRIPT_LINES))
    transcript_version: int = 0

    def push_level(self, rms: float) -> None:
        self.levels[self.level_pos % HISTORY] = rms
        self.level_pos += 1
        self.last_level = rms

    def recent_levels(self) -> np.ndarray:
        """The ring in time order, oldest first."""
        return np.roll(self.levels, -(self.level_pos % HISTORY))

    def note(self, text: str, ts: float) -> None:
        self.transcript.append(f"{time.strftime('%H:%M:%S', time.localtime(ts))}  {text}")
        self.transcript_version += 1

    def row_key(self) -> tuple[object, ...]:
        return (self.state, self.protocol_version, self.codec, *self.counters.values())

    def set_session_metadata(self, metadata: dict[str, Any]) -> None:
        self.protocol_version = metadata.get("protocol_version")
        uplink = metadata.get("uplink") or {}
        if uplink:
            self.codec = f"opus {uplink.get('sample_rate', '?')} Hz / {uplink.get('frame_ms', '?')} ms"


class LiveState:
    def __init__(self) -> None:
        self.devices: dict[str, DeviceLive] = {}
        self.order: list[str] = []  # first-seen order: rows keep their place
        self.events_seen = 0

    def apply(self, events: list[LiveEvent]) -> tuple[set[str], list[LiveEvent]]:
        """Fold events in; returns the devices that changed and the connect events (new sessions)."""
        changed: set[str] = set()
        connects = []
        for ev in events:
            self.events_seen += 1
            dev = self.devices.get(ev.device_id)
            if dev is None or (ev.kind == "connect" and dev.session_id != ev.session_id):
                dev = DeviceLive(ev.device_id, ev.session_id)
                if ev.device_id not in self.devices:
                    self.order.append(ev.device_id)
                self.devices[ev.device_id] = dev
            changed.add(ev.device_id)
            data = ev.data
            match ev.kind:
                case "connect":
                    dev.connected, dev.state = True, "idle"
                    dev.note("connected", ev.ts)
                    connects.append(ev)
                case "disconnect":
                    dev.connected, dev.state = False, "disconnected"
                    dev.note("disconnected", ev.ts)
                case "state":
                    dev.state = str(data.get("state", dev.state))
                case "level":
                    dev.push_level(float(data.get("rms", 0.0)))
                    dev.speech = bool(data.get("speech", False))
                case "stt":
                    dev.counters["stt"] += 1
                    dev.note(f"user: {data.get('text', '')}", ev.ts)
                case "llm":
                    dev.note(f"llm: {data.get('emotion') or data.get('text') or data}", ev.ts)
                case "tts":
                    if data.get("state") == "sentence_start":
                        dev.counters["tts"] += 1
                        dev.note(f"assistant: {data.get('text', '')}", ev.ts)
                case "tool_call":
                    dev.counters["tool_calls"] += 1
                    dev.note(f"tool {data.get('name')}({data.get('arguments', '')})", ev.ts)
                case "tool_result":
                    if "tools" in data:
                        dev.note(f"tools: {', '.join(data['tools'])}", ev.ts)
                    else:
                        dev.note(f"→ {data.get('name')}: {str(data.get('output', ''))[:200]}", ev.ts)
                case "error":
                    dev.counters["errors"] += 1
                    dev.note(f"error: {data.get('message', '')}", ev.ts)
                case "command":
                    dev.note(f"operator: {data.get('command')} {data.get('message', '')}".rstrip(), ev.ts)
        return changed, connects

    def apply_summaries(self, summaries: list[dict[str, Any]]) -> set[str]:
        """Fold in what the in-process device server reports per connection (``DeviceServer.devices()``):
        the authoritative state, protocol, codec and frame counters. Returns the devices whose row changed."""
        changed = set()
        for s in summaries:
            dev = self.devices.get(str(s.get("device_id")))
            if dev is None or dev.session_id != s.get("session_id"):
                continue  # the feed has not announced it yet (or this is an older connection)
            before = dev.row_key()
            dev.state = str(s.get("state", dev.state))
            dev.protocol_version = s.get("protocol_version", dev.protocol_version)
            dev.codec = describe_codec(s)
            dev.counters["frames_in"] = int(s.get("frames_in", 0))
            dev.counters["frames_out"] = int(s.get("frames_out", 0))
            bad = int(s.get("bad_packets", 0)) + int(s.get("bad_frames", 0))
            dev.counters["errors"] = max(dev.counters["errors"], bad)
            if before != dev.row_key():
                changed.add(dev.device_id)
        return changed


def describe_codec(summary: dict[str, Any]) -> str:
    """``opus ↑16 kHz/60 ms ↓24 kHz`` from a connection summary."""
    up = summary.get("uplink_frame_ms")
    down = summary.get("downlink_rate")
    text = str(summary.get("codec", "opus"))
    if up:
        text += f" ↑16 kHz/{up} ms"
    if down:
        text += f" ↓{int(down) // 1000} kHz"
    return text
