"""Simulator benchmark: how many streaming devices one simulator process keeps in real time on one core,
and what a device owner measures against our server with offline providers.

    python -m bench.simulator [--max-devices 1200] [--seconds 10] [--turns 5] [--load-devices 30]

Prints ``BENCH <name> <value> <unit>`` on stdout (``BENCH <name>_goal_met 1|0 bool`` after a figure with
a goal); progress on stderr.  See bench/README.md, section "Simulator benchmark".

1. **Capacity.**  A child process pinned to one core (``os.sched_setaffinity``) runs N
   :class:`~simulator.client.DeviceClient` devices (handshake, hello, state machine, playback model, MCP)
   that each stream opus speech in real time in auto mode, like a mic: one 60 ms packet every 60 ms on an
   absolute schedule, start offsets spread over the 60 ms.  The speech is encoded once and shared (what
   ``--devices`` load mode does).  They stream to a sink server (hello, then discards audio) in this
   process, pinned to the other core, so the figure is the simulator's and not a server's.  N keeps real
   time when the send lateness p99 ≤ 20 ms and ≥ 99.5 % of the scheduled packets went out in the window.
   N doubles from 100, then is bisected to 25 devices.
2. **Against our server** (``DeviceServer`` in this process, offline providers: Whisper tiny.en, the
   local LLM, espeak; no storage), devices in a child process:
   spoken turns (espeak speech streamed in real time, auto mode: end of speech → first audio includes the
   server's 700 ms end-of-speech silence and Whisper), text turns, and ``--load-devices`` devices each
   asking twice at once (load mode), with jitter, dropped and late frames and clipped endings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
GOALS: dict[str, tuple[str, float]] = {"sim_streaming_devices_one_core": (">=", 200)}
LATENESS_LIMIT_MS = 20.0
SENT_FRACTION = 0.995
FRAME_S = 0.06
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str) -> None:
    shown = f"{value:.0f}" if unit in ("devices", "frames", "count", "bool") else (
        f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}")  # fmt: skip
    print(f"BENCH {name} {shown} {unit}", flush=True)
    if name in GOALS:
        op, target = GOALS[name]
        met = value >= target if op == ">=" else value <= target
        print(f"BENCH {name}_goal_met {int(met)} bool", flush=True)
        if not met:
            log(f"GOAL MISSED: {name} = {shown} {unit}, goal {op} {target:g}")


def pct(values: Any, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


# ---- workers (child processes) --------------------------------------------------------------------------


def _speech() -> Any:
    from simulator.inputs import PcmSource
    from simulator.load import EncodedSpeech
    from tests.support.speech import spoken_pcm16k

    return EncodedSpeech.encode(PcmSource(spoken_pcm16k("please turn on the kitchen radio and play some music")),
                                "radio", trailing_silence_ms=1200)  # fmt: skip


async def worker_stream(args: argparse.Namespace) -> dict[str, Any]:
    """N devices streaming for ``seconds``; lateness of every packet sent after the warm-up."""
    from simulator.client import DeviceClient
    from simulator.identity import DeviceIdentity
    from simulator.load import derive_identity

    packets = _speech().packets
    n = args.devices
    base = DeviceIdentity("02:be:00:00:00:00", "00000000-0000-4000-8000-000000000000")
    clients = [DeviceClient(args.url, derive_identity(base, i), decode_audio=False, open_timeout_s=60,
                            hello_timeout_s=60) for i in range(n)]  # fmt: skip
    gate = asyncio.Semaphore(32)

    async def open_one(client: DeviceClient) -> None:
        async with gate:
            await client.connect()
            await client.listen_start("auto")

    await asyncio.gather(*(open_one(c) for c in clients))
    warmup = 2.0
    start = time.monotonic() + 0.2
    window = (start + warmup, start + warmup + args.seconds)
    lateness: list[float] = []
    scheduled = 0
    sent = 0
    lag: list[float] = []

    async def stream(i: int, client: DeviceClient) -> None:
        nonlocal scheduled, sent
        offset = start + FRAME_S * i / n
        k = (i * 7) % len(packets)
        j = 0
        while True:
            due = offset + j * FRAME_S
            if due >= window[1]:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            await client.send_opus(packets[(k + j) % len(packets)])
            if window[0] <= due:
                scheduled += 1
                if now < window[1] + 0.05:
                    sent += 1
                    lateness.append(now - due)
            j += 1

    async def monitor() -> None:
        while True:
            planned = time.monotonic() + 0.005
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if window[0] <= now <= window[1]:
                lag.append(now - planned)

    watcher = asyncio.create_task(monitor())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(stream(i, c) for i, c in enumerate(clients)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    watcher.cancel()
    muted = sum(c.stats.packets_muted for c in clients)
    errors = sum(c.stats.protocol_errors for c in clients)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    total_packets = sum(c.stats.packets_sent for c in clients)
    late_ms = np.asarray(lateness) * 1000
    return {
        "devices": n, "scheduled": scheduled, "sent": sent, "late_p50_ms": pct(late_ms, 50),
        "late_p99_ms": pct(late_ms, 99), "late_max_ms": float(late_ms.max()) if len(late_ms) else float("nan"),
        "loop_lag_p99_ms": pct(np.asarray(lag) * 1000, 99), "cpu_s": cpu, "wall_s": warmup + args.seconds + 0.2,
        "packets": total_packets, "muted": muted, "protocol_errors": errors,
        "affinity": sorted(os.sched_getaffinity(0)),
    }  # fmt: skip


async def worker_turns(args: argparse.Namespace) -> dict[str, Any]:
    """Spoken and text turns from one device, then ``load_devices`` devices asking at once."""
    from simulator.client import DeviceClient
    from simulator.identity import DeviceIdentity
    from simulator.inputs import PcmSource, speak
    from simulator.load import LoadInput, run_load
    from simulator.session import ConnectOptions
    from tests.support.speech import spoken_pcm16k

    def fields(report: Any) -> dict[str, Any]:
        return {
            "latency_s": report.first_frame_latency_s, "jitter_ms": list(report.jitter_ms), "stt": report.stt,
            "received": report.frames_received, "played": report.frames_played, "dropped": report.dropped,
            "late": report.late, "clipped": report.clipped, "aborted": report.aborted,
        }  # fmt: skip

    identity = DeviceIdentity("02:be:11:00:00:01", "00000000-0000-4000-8000-0000000000b1")
    client = DeviceClient(args.url, identity, decode_audio=True)
    await client.connect()
    question = PcmSource(spoken_pcm16k("what time is it"))
    spoken = []
    for _ in range(args.turns + 1):  # the first warms the server's Whisper up
        await speak(client, question, "auto", realtime=True, trailing_silence_ms=1500)
        spoken.append(fields(await client.wait_for_turn(60)))
    typed = []
    for _ in range(args.turns + 1):
        await client.send_text("hello")
        typed.append(fields(await client.wait_for_turn(60)))
    await client.close()
    log(f"worker: heard {[t['stt'] for t in spoken]}")

    base = ConnectOptions(args.url, DeviceIdentity("02:be:22:00:00:00", "00000000-0000-4000-8000-0000000000c2"))
    report = await run_load(base, args.load_devices, inputs=[LoadInput("text", text="hello")], repeat=2,
                            ramp_s=1.0, timeout=120)  # fmt: skip
    loaded = [fields(r) for result in report.results for r in result.reports]
    return {"spoken": spoken[1:], "typed": typed[1:], "load": loaded, "load_errors": dict(report.errors),
            "load_failed": report.failed, "load_connected": report.connected}  # fmt: skip


def run_worker(args: argparse.Namespace) -> None:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    logging.basicConfig(level=logging.WARNING)
    worker = worker_stream if args.worker == "stream" else worker_turns
    result = asyncio.run(worker(args))
    Path(args.out).write_text(json.dumps(result))


async def child(mode: str, url: str, timeout: float, **options: Any) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix=f"bench-sim-{mode}-", suffix=".json")[1])
    argv = [sys.executable, "-m", "bench.simulator", "--worker", mode, "--url", url, "--out", str(out)]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
        if code != 0:
            raise RuntimeError(f"the {mode} worker failed (exit {code})")
        return json.loads(await asyncio.to_thread(out.read_text))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(out.unlink, missing_ok=True)


# ---- 1: capacity ----------------------------------------------------------------------------------------------


class SinkServer:
    """Says hello like a xiaozhi server and throws the audio away."""

    def __init__(self) -> None:
        self.connections = 0
        self.frames = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            await ws.recv()
            await ws.send(json.dumps({"type": "hello", "transport": "websocket", "session_id": f"s{self.connections}",
                                      "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1,
                                                       "frame_duration": 60}}))  # fmt: skip
            async for message in ws:
                if isinstance(message, bytes):
                    self.frames += 1
        except ConnectionClosed:
            pass


def keeps_real_time(result: dict[str, Any]) -> bool:
    return result["late_p99_ms"] <= LATENESS_LIMIT_MS and result["sent"] >= SENT_FRACTION * result["scheduled"]


async def bench_capacity(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))
    sim_core, sink_core = cores[0], cores[-1]
    if len(cores) > 1:
        os.sched_setaffinity(0, {sink_core})
    sink = SinkServer()
    async with serve(sink.handler, "127.0.0.1", 0, max_size=2**20, compression=None, ping_interval=None,
                     max_queue=None) as server:  # fmt: skip
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/xiaozhi/v1/"
        log(f"capacity: simulator on core {sim_core}, sink server on core {sink_core}, {args.seconds:g} s windows")
        results: dict[int, dict[str, Any]] = {}

        async def trial(n: int) -> bool:
            result = await child("stream", url, 300, devices=n, seconds=args.seconds, cpu=sim_core)
            results[n] = result
            ok = keeps_real_time(result)
            per_packet = result["cpu_s"] / max(1, result["packets"]) * 1e6
            busy = result["cpu_s"] / result["wall_s"]
            log(f"  {n:4d} devices: send lateness p50 {result['late_p50_ms']:.1f} ms, p99 {result['late_p99_ms']:.1f} "
                f"ms, max {result['late_max_ms']:.0f} ms; {result['sent']}/{result['scheduled']} packets sent in the "
                f"window; loop lag p99 {result['loop_lag_p99_ms']:.1f} ms; CPU {busy:.0%} of the core, "
                f"{per_packet:.0f} µs per packet → {'real time' if ok else 'FALLS BEHIND'}")  # fmt: skip
            return ok

        good, bad = 0, None
        n = 100
        while n <= args.max_devices:
            if await trial(n):
                good, n = n, n * 2
            else:
                bad = n
                break
        if bad is None and good < args.max_devices:
            bad = args.max_devices + 1 if not await trial(args.max_devices) else None
            good = args.max_devices if bad is None else good
        while bad is not None and bad - good > 25:
            mid = (good + bad) // 2 // 25 * 25 or 25
            if mid in (good, bad):
                break
            if await trial(mid):
                good = mid
            else:
                bad = mid
    os.sched_setaffinity(0, set(cores))
    emit("sim_streaming_devices_one_core", good, "devices")
    at = results.get(good) or results.get(min(results))
    if at:
        emit("sim_stream_send_lateness_p99_ms", at["late_p99_ms"], "ms")
        emit("sim_stream_cpu_us_per_packet", at["cpu_s"] / max(1, at["packets"]) * 1e6, "us")
    if bad is not None:
        log(f"the simulator keeps real time with {good} streaming devices on one core, falls behind at {bad}")


# ---- 2: against our server ---------------------------------------------------------------------------------------


async def bench_server(args: argparse.Namespace) -> None:
    from server.config import ServerSettings, Settings
    from server.device.server import DeviceServer

    settings = Settings(server=ServerSettings(host="127.0.0.1", port=0, http_port=0))
    log("our server with offline providers (Whisper tiny.en, local LLM, espeak), no storage")
    server = DeviceServer(settings)
    await server.start()
    try:
        result = await child("turns", server.websocket_url(), 900, turns=args.turns, load_devices=args.load_devices)
    finally:
        await server.stop()
    spoken, typed, load = result["spoken"], result["typed"], result["load"]
    spoken_ms = [t["latency_s"] * 1000 for t in spoken if t["latency_s"] is not None]
    typed_ms = [t["latency_s"] * 1000 for t in typed if t["latency_s"] is not None]
    load_ms = [t["latency_s"] * 1000 for t in load if t["latency_s"] is not None]
    everything = spoken + typed + load
    jitter = [j for t in everything for j in t["jitter_ms"]]
    log(f"spoken turns: first audio {', '.join(f'{x:.0f}' for x in spoken_ms)} ms after the last speech packet")
    log(f"text turns: first audio p50 {pct(typed_ms, 50):.0f} ms; {args.load_devices} devices × 2 at once: "
        f"p50 {pct(load_ms, 50):.0f} ms, p99 {pct(load_ms, 99):.0f} ms; {result['load_failed']} failed, "
        f"errors {result['load_errors'] or 'none'}")  # fmt: skip
    log(
        f"jitter over {len(jitter)} frames of {len(everything)} replies: p50 {pct(jitter, 50):.1f} ms, "
        f"p99 {pct(jitter, 99):.1f} ms, max {max(jitter, default=float('nan')):.0f} ms"
    )
    emit("sim_spoken_first_audio_p50_ms", pct(spoken_ms, 50), "ms")
    emit("sim_text_first_audio_p50_ms", pct(typed_ms, 50), "ms")
    emit("sim_load_devices", args.load_devices, "devices")
    emit("sim_load_first_audio_p50_ms", pct(load_ms, 50), "ms")
    emit("sim_load_first_audio_p99_ms", pct(load_ms, 99), "ms")
    emit("sim_jitter_p50_ms", pct(jitter, 50), "ms")
    emit("sim_jitter_p99_ms", pct(jitter, 99), "ms")
    emit("sim_frames_dropped", sum(t["dropped"] for t in everything), "frames")
    emit("sim_frames_late", sum(t["late"] for t in everything), "frames")
    emit("sim_clipped_endings", sum(t["clipped"] > 0 and not t["aborted"] for t in everything), "count")
    emit("sim_replies_measured", len(everything), "count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-devices", type=int, default=1200, help="capacity: stop doubling here")
    parser.add_argument("--seconds", type=float, default=10.0, help="capacity: measured seconds per trial")
    parser.add_argument("--turns", type=int, default=5, help="our server: spoken and text turns (each)")
    parser.add_argument("--load-devices", type=int, default=30, help="our server: devices asking at once")
    parser.add_argument("--only", choices=["capacity", "server"], help="run one part")
    # worker (child process) options
    parser.add_argument("--worker", choices=["stream", "turns"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    if args.only in (None, "capacity"):
        asyncio.run(bench_capacity(args))
    if args.only in (None, "server"):
        asyncio.run(bench_server(args))
    log("done")


if __name__ == "__main__":
    main()
