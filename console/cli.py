"""``xiaozhi console``: the desktop operations console (PySide6 + qasync).

The GUI needs Qt's event loop to own the process, with asyncio running inside it (qasync), so it
cannot run inside the ``asyncio.run`` that ``xiaozhi``'s main() wraps around commands. ``cmd_console``
is therefore a plain function: main() calls it *before* starting asyncio (it evaluates
``args.run(args, settings)`` first), the GUI runs to completion in here, and what comes back is a
coroutine that only returns the exit code. Without a display it returns the headless coroutine instead,
which main() then runs like any other command (storage + device server, printing the device URLs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from server.config import Settings


def add_console_parser(sub: Any) -> None:
    p = sub.add_parser("console", help="the desktop operations console (what `make run` starts)")
    p.add_argument("--open", metavar="session/ID", help="open this session (a copied xiaozhi:// link works too)")
    p.add_argument("--screenshot", metavar="PATH", type=Path, help="render a view with its data, save a PNG, exit")
    p.add_argument("--view", choices=["sessions", "conversation", "live"], default="sessions",
                   help="which view --screenshot renders")  # fmt: skip
    p.add_argument("--no-device-server", action="store_true", help="browse only; do not serve devices")
    p.set_defaults(run=cmd_console)


async def _exit_code(code: int) -> int:
    return code


def cmd_console(args: argparse.Namespace, settings: Settings) -> Awaitable[int]:
    from console.app import ConsoleOptions, has_display, run_gui

    if args.open:
        from console.domain.links import parse_target

        try:
            parse_target(args.open)
        except ValueError as exc:
            print(f"error: --open: {exc}", file=sys.stderr)
            return _exit_code(2)
    if args.screenshot is None and not has_display():
        print("no display (DISPLAY/WAYLAND_DISPLAY unset): running headless — storage and the device server only")
        sys.stdout.flush()
        return _headless(settings, serve_devices=not args.no_device_server)
    from console.domain.connection import apply_saved_connection

    apply_saved_connection(settings, explicit_config=bool(args.config))
    options = ConsoleOptions(
        open_target=args.open,
        screenshot=args.screenshot,
        view=args.view,
        serve_devices=(not args.no_device_server and args.screenshot is None) or args.view == "live",
    )
    return _exit_code(run_gui(settings, options))


async def _headless(settings: Settings, *, serve_devices: bool) -> int:
    from console.domain.backend import ConsoleBackend

    backend = ConsoleBackend(settings, serve_devices=serve_devices)
    try:
        for line in await backend.start_storage():
            print(line)
        if serve_devices:
            for line in (await backend.start_device_server()).lines():
                print(line)
        print("running; press Ctrl+C to stop", flush=True)
        await asyncio.Event().wait()
    finally:
        await backend.stop()
    return 0
