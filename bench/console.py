"""Console benchmarks, offscreen: ``python -m bench.console [--sessions N] [--messages-per-session M]``.

Prints ``BENCH <name> <value> <unit>`` lines. Uses the machine's PostgreSQL (``XIAOZHI_TEST_PG``, default
127.0.0.1:5432) with a throw-away database filled server-side (generate_series), and no S3 (the audio
figure decodes a 30 s Ogg Opus clip in memory, as the console does after the download).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import time
import uuid

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("XIAOZHI_CONSOLE_CONFIG_DIR", f"/tmp/xz-bench-console-{os.getpid()}")

import asyncpg

from server.storage import schema
from server.storage.db import execute_each, settings_from_dsn

ADMIN = os.environ.get("XIAOZHI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

FILL = """
INSERT INTO conversation_sessions (session_id, device_id, agent_id, started_at, ended_at, status, message_count,
                                   last_seq, last_message_at)
SELECT 'b-' || g, 'dev-' || (g % 500), 'agent-' || (g % 7), now() - (g || ' minutes')::interval,
       now() - (g || ' minutes')::interval + interval '40 seconds', 'ended', $1::int, $1::int,
       now() - (g || ' minutes')::interval + interval '40 seconds'
FROM generate_series(1, $2::int) g;
"""
FILL_MESSAGES = """
INSERT INTO conversation_messages (session_id, device_id, message_id, sequence_num, role, content, created_at)
SELECT 'b-' || s, 'dev-' || (s % 500), 'm-' || s || '-' || q, q, CASE WHEN q % 2 = 1 THEN 'user' ELSE 'assistant' END,
       CASE WHEN s % 3 = 0 THEN '今天天气怎么样 第' || s || '号 ' || q ELSE 'hello there message ' || s || ' ' || q END,
       now() - (s || ' minutes')::interval + (q || ' seconds')::interval
FROM generate_series(1, $2::int) s, generate_series(1, $1::int) q;
"""


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.1f} {unit}", flush=True)


async def make_db(sessions: int, per: int) -> str:
    name = f"xz_bench_console_{uuid.uuid4().hex[:8]}"
    await execute_each(ADMIN, f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(ADMIN.rsplit("/", 1)[0] + f"/{name}")
    try:
        await schema.upgrade(conn)
        t = time.perf_counter()
        await conn.execute(FILL, per, sessions)
        await conn.execute(FILL_MESSAGES, per, sessions)
        await conn.execute("ANALYZE")
        print(f"# filled {sessions} sessions / {sessions * per} messages in {time.perf_counter() - t:.0f} s")
    finally:
        await conn.close()
    return name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--messages-per-session", type=int, default=10)
    args = parser.parse_args()
    dbname = asyncio.run(make_db(args.sessions, args.messages_per_session))
    try:
        with contextlib.ExitStack() as stack:
            # a sound output to click through to: a private PulseAudio daemon with a null sink (no sound card here)
            from tests.support.sim import private_pulseaudio

            try:
                pulse = stack.enter_context(private_pulseaudio())
                os.environ.update(PULSE_SERVER=pulse.server, PULSE_SINK=pulse.sink)
            except RuntimeError as exc:
                print(f"# {exc}")
            run(dbname)
    finally:
        asyncio.run(execute_each(ADMIN, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


def run(dbname: str) -> None:
    t0 = time.perf_counter()
    import numpy as np
    import qasync
    from PySide6.QtWidgets import QApplication

    from console.app import ConsoleApp, ConsoleOptions
    from console.domain.audio import decode_ogg_opus
    from console.domain.session_query import SessionQuery
    from server.audio.ogg_opus import build_ogg_opus
    from server.config import PoolSettings, Settings
    from server.demo import synthetic_voice
    from server.live.feed import LiveEvent

    app = QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    settings = Settings(database=settings_from_dsn(ADMIN, database=dbname, pool=PoolSettings(min_idle=2, max_open=10)),
                        minio=None, data_dir=f"/tmp/xz-bench-console-data-{os.getpid()}")  # fmt: skip
    console = ConsoleApp(settings, ConsoleOptions(serve_devices=False, demo_when_empty=False), loop)
    console.window.show()

    async def scenario() -> None:
        await console.start()
        await asyncio.sleep(0)
        bench("console_start_to_interactive", (time.perf_counter() - t0) * 1000, "ms")
        view = console.window.sessions
        t = time.perf_counter()
        await view.reload(SessionQuery())
        await asyncio.sleep(0)
        bench("console_first_page", (time.perf_counter() - t) * 1000, "ms")
        worst = 0.0
        bar = view.table.verticalScrollBar()
        for _ in range(300):  # scroll a page at a time; pages load in the background as the end nears
            t = time.perf_counter()
            bar.setValue(bar.value() + bar.pageStep())
            view.table.viewport().repaint()  # the frame: paint synchronously
            worst = max(worst, time.perf_counter() - t)
            await asyncio.sleep(0.005)
        bench("console_scroll_worst_frame", worst * 1000, "ms")
        print(f"# scrolled to {view.model.rowCount()} rows")
        times = []
        for text in ("天气", "hello there", "第12号", "message 99"):
            t = time.perf_counter()
            await view.reload(SessionQuery(text=text))
            await asyncio.sleep(0)
            times.append(time.perf_counter() - t)
        bench("console_search_results_max", max(times) * 1000, "ms")
        data = build_ogg_opus(synthetic_voice(30.0), input_sample_rate=16000).data
        t = time.perf_counter()
        clip = await loop.run_in_executor(None, decode_ogg_opus, data)
        try:
            console.player.play(clip)
            for _ in range(5000):  # poll, as the GUI's timer does, until PortAudio's callback took audio
                if console.player.position_s > 0:
                    break
                await asyncio.sleep(0.001)
            print("# sound: until the output's first callback took the clip's first block (PulseAudio null sink)")
        except Exception as exc:
            print(f"# no sound output ({exc}); measured decode + player start only")
        bench("console_click_to_sound_30s_clip", (time.perf_counter() - t) * 1000, "ms")
        console.player.stop()
        live = console.live
        console.window.show_view("live")
        feed = console.backend.live
        for d in range(16):
            feed.publish(LiveEvent("connect", f"dev-{d}", f"sess-{d}"))
        rng = np.random.default_rng(0)

        async def stream_levels(seconds: float) -> None:  # 16 devices × 100 level events/s (a 10 ms VAD hop)
            t = time.perf_counter()
            while time.perf_counter() - t < seconds:
                for d in range(16):
                    feed.publish(LiveEvent("level", f"dev-{d}", f"sess-{d}", {"rms": float(rng.uniform(0, 8000))}))
                await asyncio.sleep(0.01)

        await stream_levels(1.0)  # steady state: the 16 rows and tiles exist, the connects' session lookup runs
        frames0, paints0, t = live.frames, live.grid.paints, time.perf_counter()
        await stream_levels(3.0)
        elapsed = time.perf_counter() - t
        bench("console_live_fps_16_devices", (live.frames - frames0) / elapsed, "fps")
        bench("console_live_paints_per_s", (live.grid.paints - paints0) / elapsed, "fps")
        bench("console_live_worst_tick", max(live.frame_times[-100:]) * 1000, "ms")
        bench("console_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB")
        await console.stop()

    loop.run_until_complete(scenario())
    loop.close()  # stops qasync's executor QThreads while Qt is alive (else Qt aborts at exit)


if __name__ == "__main__":
    main()
