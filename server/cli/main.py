"""The ``xiaozhi`` command. Expected failures print one line and exit non-zero, without a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from console.cli import add_console_parser
from server import event_loop
from server.cli import flags
from server.config import ConfigError, Settings, load_settings, redacted
from server.migrate.cli import add_migrate_parser
from server.runtime import StorageRuntime
from server.services.errors import ServiceStartError
from server.storage import schema
from server.storage.device_registry import DeviceRegistry
from server.storage.errors import StorageError
from server.storage.models import SessionFilter
from server.storage.retention import RetentionJob
from simulator.cli import add_sim_parser

if TYPE_CHECKING:
    from server.device.server import DeviceServer

EXIT_CONFIG = 2
EXIT_FAILED = 1

Command = Callable[[argparse.Namespace, Settings], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xiaozhi", description="xiaozhi conversation storage, server and console")
    parser.add_argument("-c", "--config", help="config.yaml (default: $XIAOZHI_CONFIG, ./config.yaml, user config)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log_level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending schema versions (safe to re-run)").set_defaults(run=cmd_db_upgrade)
    db.add_parser("status", help="show the schema version").set_defaults(run=cmd_db_status)

    retention = sub.add_parser("retention", help="remove old conversations (S27)").add_subparsers(
        dest="retention_command", required=True
    )
    run = retention.add_parser("run", help="remove messages, sessions and audio older than the retention period")
    run.add_argument("--dry-run", action="store_true", help="report what would be removed; remove nothing")
    run.add_argument("--days", type=flags.non_negative_int, help="override conversation.message_retention_days")
    run.set_defaults(run=cmd_retention_run)

    sessions = sub.add_parser("sessions", help="browse stored conversations").add_subparsers(
        dest="sessions_command", required=True
    )
    ls = sessions.add_parser("list", help="newest sessions first")
    ls.add_argument("--device", help="only this device id")
    ls.add_argument("--search", help="only sessions with a message containing these words")
    ls.add_argument("--since", type=_day, help="started on or after this day (YYYY-MM-DD, UTC)")
    ls.add_argument("--limit", type=flags.whole_number(1, 1000), default=20)
    ls.add_argument("--cursor", help="continue after the page that printed this cursor")
    ls.set_defaults(run=cmd_sessions_list)
    show = sessions.add_parser("show", help="one session's messages in order")
    show.add_argument("session_id")
    show.set_defaults(run=cmd_sessions_show)

    devices = sub.add_parser("devices", help="devices and their activation (server.require_activation)")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    devices_sub.add_parser("list", help="known devices; codes of those waiting to be bound").set_defaults(
        run=cmd_devices_list
    )
    act = devices_sub.add_parser("activate", help="bind the device that shows/speaks this activation code")
    act.add_argument("code", help="the six-digit code")
    act.set_defaults(run=cmd_devices_activate)
    deact = devices_sub.add_parser("deactivate", help="unbind a device (it must be activated again to connect)")
    deact.add_argument("device_id")
    deact.set_defaults(run=cmd_devices_deactivate)

    sub.add_parser("config", help="print the effective configuration (secrets hidden)").set_defaults(run=cmd_config)

    srv = sub.add_parser("server", help="run the device server (xiaozhi WebSocket protocol + OTA)")
    srv.add_argument("--host", help="listen address (server.host)")
    srv.add_argument("--port", type=flags.port, help="WebSocket port (server.port)")
    srv.add_argument("--http-port", type=flags.port, help="OTA/health port (server.http_port)")
    srv.set_defaults(run=cmd_server)

    demo = sub.add_parser("demo", help="start storage (embedded by default) and store a demo conversation")
    demo.add_argument("--exit", action="store_true", help="exit after storing instead of waiting for Ctrl+C")
    demo.set_defaults(run=cmd_demo)

    add_sim_parser(sub)
    add_migrate_parser(sub)
    add_console_parser(sub)
    return parser


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=args.log_level or settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return event_loop.run(_stop_on_sigterm(args.run(args, settings)))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:
        return 143
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (StorageError, ServiceStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _stop_on_sigterm(command: Awaitable[int]) -> int:
    """SIGTERM cancels the command, so runtimes stop cleanly (bus drained, embedded services shut down)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await command


async def _with_runtime(settings: Settings, fn: Callable[[StorageRuntime], Awaitable[int]], **start: object) -> int:
    runtime = StorageRuntime(settings)
    try:
        await runtime.start(**start)  # type: ignore[arg-type]
        return await fn(runtime)
    finally:
        await runtime.stop()


async def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    async def run(rt: StorageRuntime) -> int:
        assert rt.pool is not None
        async with rt.pool.acquire() as conn:
            missing = await schema.missing_deferred(conn)
            applied = await schema.upgrade(conn)
            state = await schema.status(conn)
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
        for name in missing:
            print(f"built {name} (a bulk load had dropped it)")
        done = applied or missing
        print(f"schema version {state.current} (latest {state.latest})" + ("" if done else ": already up to date"))
        return 0

    return await _with_runtime(settings, run, events=False, schema_mode="none", audio=False)


async def cmd_db_status(args: argparse.Namespace, settings: Settings) -> int:
    async def run(rt: StorageRuntime) -> int:
        assert rt.pool is not None
        async with rt.pool.acquire() as conn:
            state = await schema.status(conn)
        print(f"database: {rt.describe()[0]}")
        print(f"schema version {state.current} of {state.latest}")
        for version, name, applied_at in state.applied:
            print(f"  {version:04d}_{name}  applied {applied_at:%Y-%m-%d %H:%M:%S %Z}")
        for migration in state.pending:
            print(f"  {migration.version:04d}_{migration.name}  PENDING (run: xiaozhi db upgrade)")
        for version in state.modified:
            print(f"  {version:04d}  MODIFIED since it was applied")
        for name in state.missing:
            print(f"  {name}  MISSING: a bulk load was cut off (run: xiaozhi db upgrade)")
        return 0 if state.up_to_date else 3

    return await _with_runtime(settings, run, events=False, schema_mode="none", audio=False)


async def cmd_retention_run(args: argparse.Namespace, settings: Settings) -> int:
    days = settings.conversation.message_retention_days if args.days is None else args.days

    async def run(rt: StorageRuntime) -> int:
        assert rt.pool is not None
        report = await RetentionJob(rt.pool, rt.audio, days).run(dry_run=args.dry_run)
        if days == 0:
            print("retention is 0 days (keep forever): nothing to remove")
            return 0
        print("DRY RUN: nothing is removed" if args.dry_run else f"retention: {days} days")
        for line in report.lines():
            print(line)
        return 0 if not report.audio_failed else EXIT_FAILED

    return await _with_runtime(settings, run, events=False, schema_mode="require")


async def cmd_sessions_list(args: argparse.Namespace, settings: Settings) -> int:
    since = datetime.combine(args.since, datetime.min.time(), UTC) if args.since else None

    async def run(rt: StorageRuntime) -> int:
        assert rt.store is not None
        page = await rt.store.list_sessions(
            SessionFilter(device_id=args.device, since=since, text=args.search), limit=args.limit, cursor=args.cursor
        )
        print(f"{'started (UTC)':<20} {'status':<8} {'msgs':>5} {'audio':>5} {'tools':>5}  {'device':<20} session")
        for s in page.items:
            print(
                f"{s.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} {s.status:<8} {s.message_count:>5} "
                f"{s.audio_count:>5} {s.tool_call_count:>5}  {s.device_id:<20} {s.session_id}"
            )
        if page.next_cursor:
            print(f"more: --cursor {page.next_cursor}")
        return 0

    return await _with_runtime(settings, run, events=False, schema_mode="require", audio=False)


async def cmd_sessions_show(args: argparse.Namespace, settings: Settings) -> int:
    async def run(rt: StorageRuntime) -> int:
        assert rt.store is not None
        info = await rt.store.get_session(args.session_id)
        print(f"session {info.session_id}  device {info.device_id}  status {info.status}")
        for m in await rt.store.timeline(args.session_id):
            extra = ""
            if m.tool_calls:
                extra = " tool_calls=" + json.dumps(m.tool_calls, ensure_ascii=False)
            if m.audio_file_id:
                extra += f" [audio {m.audio_file_id}]"
            print(f"{m.sequence_num:>4} {m.created_at.astimezone(UTC):%H:%M:%S} {m.role:<9} {m.content}{extra}")
        return 0

    return await _with_runtime(settings, run, events=False, schema_mode="require", audio=False)


async def cmd_devices_list(args: argparse.Namespace, settings: Settings) -> int:
    async def run(rt: StorageRuntime) -> int:
        assert rt.pool is not None
        now = datetime.now(UTC)
        print(f"{'device':<20} {'state':<10} {'code':<7} client")
        for d in await DeviceRegistry(rt.pool).list():
            waiting = d.activation_code and d.activation_expires_at and d.activation_expires_at > now
            state = "activated" if d.activated else "waiting" if waiting else "unbound"
            code = d.activation_code if waiting and not d.activated else "-"
            print(f"{d.device_id:<20} {state:<10} {code:<7} {d.client_id or '-'}")
        return 0

    return await _with_runtime(settings, run, events=False, schema_mode="require", audio=False)


async def cmd_devices_activate(args: argparse.Namespace, settings: Settings) -> int:
    async def run(rt: StorageRuntime) -> int:
        assert rt.pool is not None
        device_id = await DeviceRegistry(rt.pool).activate(args.code)
        print(f"activated {device_id}")
        return 0

    return await _with_runtime(settings, run, events=False, schema_mode="require", audio=False)


async def cmd_devices_deactivate(args: argparse.Namespace, settings: Settings) -> int:
    async def run(rt: StorageRuntime) -> int:
        assert rt.pool is not None
        await DeviceRegistry(rt.pool).deactivate(args.device_id)
        print(f"deactivated {args.device_id}")
        return 0

    return await _with_runtime(settings, run, events=False, schema_mode="require", audio=False)


async def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(f"# source: {settings.source}")
    print(json.dumps(redacted(settings), indent=2, ensure_ascii=False))
    return 0


async def _serve_devices(settings: Settings, rt: StorageRuntime, *, any_port: bool = False) -> DeviceServer:
    """Start the device server and say where devices connect. ``any_port``: the demo must not fail
    just because something else already listens on 8000/8003 — it takes free ports instead."""
    from server.device.server import DeviceServer

    server = DeviceServer(settings, runtime=rt)
    try:
        await server.start()
    except OSError as exc:
        if not any_port:
            ports = f"{settings.server.port}/{settings.server.http_port}"
            raise ServiceStartError("device server", f"cannot listen on ports {ports}: {exc}") from None
        await server.stop()
        settings.server = settings.server.model_copy(update={"port": 0, "http_port": 0})
        server = DeviceServer(settings, runtime=rt)
        await server.start()
    print(f"devices connect to: {server.websocket_url()}")
    print(f"OTA URL for the firmware: {server.ota_url()}")
    sys.stdout.flush()
    return server


async def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    flags = {"host": args.host, "port": args.port, "http_port": args.http_port}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if overrides:
        settings.server = settings.server.model_copy(update=overrides)

    async def run(rt: StorageRuntime) -> int:
        for line in rt.describe():
            print(line)
        server = await _serve_devices(settings, rt)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()
        return 0

    return await _with_runtime(settings, run, retention=True)


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from server.demo import store_demo_conversation

    async def run(rt: StorageRuntime) -> int:
        for line in rt.describe():
            print(line)
        for line in await store_demo_conversation(rt):
            print(line)
        if args.exit:
            return 0
        server = await _serve_devices(settings, rt, any_port=True)
        try:
            print("storage and the device server are running; press Ctrl+C to stop")
            sys.stdout.flush()
            await asyncio.Event().wait()
        finally:
            await server.stop()
        return 0

    return await _with_runtime(settings, run, retention=True)


if __name__ == "__main__":
    sys.exit(main())
