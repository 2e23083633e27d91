"""Simulated xiaozhi devices for ``bench.server``, in a process of their own (not sharing the server's GIL).

    python -m bench.loadgen MODE --url ws://127.0.0.1:PORT/xiaozhi/v1/ --out RESULT.json [options]

Modes (each device speaks protocol v1 like the firmware: no permessage-deflate, one opus packet per
binary message):

* ``idle``     connect and hello ``--devices`` devices, then sit idle until told to close.
* ``uplink``   connect, hello and ``listen start auto``; then stream real opus speech + silence in real
               time (one 60 ms packet per device every 60 ms, on a monotonic clock, start offsets spread
               over the 60 ms) for ``--seconds``; every send time is recorded.
* ``downlink`` connect and hello; each device sends ``listen detect`` with ``--text`` (starts spread over
               ``--spread`` s) and records the arrival time of every binary frame until ``tts stop``.
* ``turns``    one device, ``--turns`` text turns: ``listen detect`` → first binary frame → ``abort``.
* ``offline``  one device, ``--turns`` spoken turns in auto mode: espeak speech + silence streamed in
               real time; time from the last speech packet sent to the first TTS frame received.

The parent talks to it by lines: the load generator prints ``READY`` when its devices are connected
and waits for a ``GO`` line on stdin (``idle``: waits for a line, then closes); ``downlink`` prints
``FINISHED`` when every reply has ended; at the end it writes its measurements to ``--out`` as JSON
and prints ``DONE``. Progress goes to stderr. All times are
``time.monotonic()``, which on Linux is one clock for every process, so the parent can compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

FRAME_S = 0.06
FRAME_SAMPLES = 960  # 60 ms at 16 kHz
LISTEN_AUTO = json.dumps({"type": "listen", "state": "start", "mode": "auto", "session_id": ""})
ABORT = json.dumps({"type": "abort", "session_id": ""})
HELLO = json.dumps(
    {"type": "hello", "version": 1, "transport": "websocket", "features": {"mcp": False},
     "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}
)  # fmt: skip
# What the uplink devices say, looped: espeak speech, then silence long enough for the server VAD's
# end of speech (700 ms by default). Like the firmware, a device sends ``listen start`` once and then
# streams; the bench server's ASR hears nothing, so each utterance's turn ends at once and the server
# goes on listening (no reply, so the device never stops its microphone).
UPLINK_SPEECH = "please turn on the kitchen radio and play some quiet music for me"
UPLINK_SILENCE_MS = 1200
OFFLINE_SPEECH = "what time is it"

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[loadgen {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def device_id(i: int) -> str:
    return f"02:b0:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


async def open_device(url: str, i: int) -> ClientConnection:
    headers = {"Device-Id": device_id(i), "Client-Id": f"00000000-0000-4000-8000-{i:012d}", "Protocol-Version": "1"}
    # compression=None: the firmware's WebSocket client does not negotiate permessage-deflate.
    ws = await connect(url, additional_headers=headers, compression=None, open_timeout=60, ping_interval=None,
                       max_size=2**20, max_queue=None)  # fmt: skip
    await ws.send(HELLO)
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if reply.get("type") != "hello":
        raise RuntimeError(f"device {i}: expected the server hello, got {reply}")
    return ws


async def open_many(url: str, n: int, parallel: int = 32) -> list[ClientConnection]:
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> ClientConnection:
        async with gate:
            return await open_device(url, i)

    conns = await asyncio.gather(*(one(i) for i in range(n)))
    log(f"{n} devices connected and greeted")
    return list(conns)


async def close_all(conns: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


async def wait_parent(expect: str | None = None) -> str:
    line = (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()
    if expect is not None and not line.startswith(expect):
        raise RuntimeError(f"the parent said {line!r}, expected {expect!r}")
    return line


def announce(word: str) -> None:
    print(word, flush=True)


def speech_packets(text: str, lead_ms: float, trail_ms: float) -> tuple[list[bytes], int]:
    """Opus packets of ``lead_ms`` silence + espeak ``text`` + ``trail_ms`` silence, and the index of the
    packet holding the last speech sample."""
    from tests.support.speech import silence, spoken_pcm16k, to_opus_packets

    speech = spoken_pcm16k(text)
    pcm = np.concatenate([silence(lead_ms), speech, silence(trail_ms)])
    last_speech = (len(silence(lead_ms)) + len(speech) - 1) // FRAME_SAMPLES
    return to_opus_packets(pcm), last_speech


# ---- modes ------------------------------------------------------------------------------------------------


async def mode_idle(args: argparse.Namespace) -> dict[str, Any]:
    conns = await open_many(args.url, args.devices)
    announce("READY")
    await wait_parent()
    await close_all(conns)
    return {"devices": len(conns)}


async def mode_uplink(args: argparse.Namespace) -> dict[str, Any]:
    packets, last_speech = speech_packets(UPLINK_SPEECH, 0, UPLINK_SILENCE_MS)
    log(f"uplink clip: {len(packets)} packets ({len(packets) * FRAME_S:.2f} s), speech in the first {last_speech + 1}")
    n = args.devices
    conns = await open_many(args.url, n)
    for ws in conns:
        await ws.send(LISTEN_AUTO)
    drains = [asyncio.create_task(_drain(ws)) for ws in conns]
    announce("READY")
    await wait_parent("GO")
    start = time.monotonic() + 0.1
    end = start + args.seconds
    sends: list[list[float]] = [[] for _ in range(n)]
    lateness: list[list[float]] = [[] for _ in range(n)]
    # Every device sends one packet per 60 ms, device i at offset 60 ms * i / n (the devices do not all send at the
    # same moment) and from its own point of the clip. One task walks that schedule and writes frames built once,
    # straight to each socket: the load generator shares the server's two cores, so it must cost as little as it
    # can (one task per device with its own sleep and ``ws.send`` cost twice the CPU; the server sees the same
    # bytes).
    frames = [_masked_binary_frame(packet) for packet in packets]
    transports = [ws.transport for ws in conns]

    async def send_all() -> None:
        for k in itertools.count():
            for i in range(n):
                due = start + FRAME_S * (k + i / n)
                if due >= end:
                    return
                delay = due - time.monotonic()
                if delay > 0.0005:  # sleeping costs more than being half a millisecond early
                    await asyncio.sleep(delay)
                now = time.monotonic()
                transports[i].write(frames[((i * 7) % len(packets) + k) % len(packets)])
                sends[i].append(now)
                lateness[i].append(now - due)

    await send_all()
    all_late = np.concatenate([np.asarray(x) for x in lateness]) * 1000
    log(f"streamed {sum(map(len, sends))} packets; send lateness p50 {np.percentile(all_late, 50):.1f} ms, "
        f"p99 {np.percentile(all_late, 99):.1f} ms, max {all_late.max():.1f} ms")  # fmt: skip
    await asyncio.sleep(0.5)
    for task in drains:
        task.cancel()
    await close_all(conns)
    return {
        "devices": {device_id(i): sends[i] for i in range(n)},
        "send_late_p50_ms": float(np.percentile(all_late, 50)),
        "send_late_p99_ms": float(np.percentile(all_late, 99)),
        "send_late_max_ms": float(all_late.max()),
    }


def _masked_binary_frame(payload: bytes) -> bytes:
    """One client→server binary WebSocket frame (FIN, masked as RFC 6455 requires of clients)."""
    return Frame(Opcode.BINARY, payload).serialize(mask=True, extensions=[])


async def _drain(ws: ClientConnection) -> None:
    """Read (and ignore) whatever the server sends, as the firmware would."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


async def _until_tts_stop(
    ws: ClientConnection, on_frame: Callable[[float], Awaitable[None] | None], timeout: float
) -> dict[str, Any]:
    """Receive until ``tts stop``; call ``on_frame(arrival)`` for every binary frame."""
    seen: dict[str, Any] = {"texts": []}
    async with asyncio.timeout(timeout):
        while True:
            data = await ws.recv()
            now = time.monotonic()
            if isinstance(data, bytes):
                pending = on_frame(now)
                if pending is not None:
                    await pending
                continue
            message = json.loads(data)
            kind, state = message.get("type"), message.get("state")
            if kind == "stt":
                seen["stt"] = message.get("text")
            elif kind == "alert":
                seen.setdefault("alerts", []).append(message.get("message"))
            elif kind == "tts" and state == "sentence_start":
                seen["texts"].append(message.get("text"))
            elif kind == "tts" and state == "stop":
                seen["stop"] = now
                return seen


async def mode_downlink(args: argparse.Namespace) -> dict[str, Any]:
    n = args.devices
    conns = await open_many(args.url, n)
    detect = json.dumps({"type": "listen", "state": "detect", "text": args.text, "session_id": ""})
    announce("READY")
    await wait_parent("GO")
    start = time.monotonic() + 0.1
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    async def device(i: int) -> None:
        await asyncio.sleep(max(0.0, start + args.spread * i / n - time.monotonic()))
        frames: list[float] = []
        sent = time.monotonic()
        await conns[i].send(detect)
        seen = await _until_tts_stop(conns[i], frames.append, timeout=args.timeout)
        results[i] = {"sent": sent, "frames": frames, "stop": seen["stop"], "sentences": len(seen["texts"]),
                      "alerts": seen.get("alerts", [])}  # fmt: skip

    await asyncio.gather(*(device(i) for i in range(n)))
    log(f"downlink: {sum(len(r['frames']) for r in results)} frames received by {n} devices")
    announce("FINISHED")
    await close_all(conns)
    return {"devices": {device_id(i): results[i] for i in range(n)}}


async def mode_turns(args: argparse.Namespace) -> dict[str, Any]:
    ws = (await open_many(args.url, 1))[0]
    detect = json.dumps({"type": "listen", "state": "detect", "text": args.text, "session_id": ""})
    announce("READY")
    await wait_parent("GO")
    turns = []
    for _ in range(args.turns):
        first: list[float] = []

        async def on_frame(now: float, first: list[float] = first) -> None:
            if not first:
                first.append(now)
                await ws.send(ABORT)  # barge in: the turn's first frame is all this figure needs

        sent = time.monotonic()
        await ws.send(detect)
        await _until_tts_stop(ws, on_frame, timeout=args.timeout)
        turns.append({"sent": sent, "first_frame": first[0] if first else None})
        await asyncio.sleep(0.02)
    await close_all([ws])
    return {"turns": turns}


async def mode_offline(args: argparse.Namespace) -> dict[str, Any]:
    packets, last_speech = speech_packets(OFFLINE_SPEECH, 600, 3000)
    ws = (await open_many(args.url, 1))[0]
    announce("READY")
    await wait_parent("GO")
    turns = []
    for turn in range(args.turns):
        inbox: asyncio.Queue[tuple[float, str | bytes]] = asyncio.Queue()
        speaking = asyncio.Event()

        async def read(
            inbox: asyncio.Queue[tuple[float, str | bytes]] = inbox, speaking: asyncio.Event = speaking
        ) -> None:
            while True:
                data = await ws.recv()
                if isinstance(data, str) and '"tts"' in data and '"start"' in data:
                    speaking.set()  # the firmware stops streaming the microphone when the reply starts
                await inbox.put((time.monotonic(), data))

        reader = asyncio.create_task(read())
        await ws.send(LISTEN_AUTO)
        start = time.monotonic() + 0.05
        last_speech_sent = None
        for k, packet in enumerate(packets):
            delay = start + k * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if speaking.is_set():
                break
            await ws.send(packet)
            if k == last_speech:
                last_speech_sent = time.monotonic()
        first_frame, stt, stop = None, None, None
        async with asyncio.timeout(args.timeout):
            while stop is None:
                at, data = await inbox.get()
                if isinstance(data, bytes):
                    first_frame = first_frame or at
                    continue
                message = json.loads(data)
                if message.get("type") == "stt":
                    stt = message.get("text")
                elif message.get("type") == "tts" and message.get("state") == "stop":
                    stop = at
        reader.cancel()
        turns.append({"last_speech_sent": last_speech_sent, "first_frame": first_frame, "stt": stt})
        log(f"offline turn {turn}: heard {stt!r}, first audio "
            f"{(first_frame - last_speech_sent) * 1000 if first_frame and last_speech_sent else float('nan'):.0f} ms "
            "after the last speech packet")  # fmt: skip
        await asyncio.sleep(0.2)
    await close_all([ws])
    return {"turns": turns}


MODES = {"idle": mode_idle, "uplink": mode_uplink, "downlink": mode_downlink, "turns": mode_turns,
         "offline": mode_offline}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True, help="where to write the measurements (JSON)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--text", default="hello")
    parser.add_argument("--spread", type=float, default=0.0, help="downlink: seconds over which devices start")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    result = asyncio.run(MODES[args.mode](args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    announce("DONE")


if __name__ == "__main__":
    main()
