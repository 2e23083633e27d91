"""``xiaozhi sim``: a simulated ESP32 xiaozhi device against any xiaozhi server (ours, the Python or Go
reference servers), driven by the laptop's microphone and keyboard, audio files, typed text, a YAML
scenario, or as ``--devices N`` devices at once.

Expected failures print one line ``error: …`` on stderr and exit non-zero, without a traceback:
2 for what the user gave wrong (flags, files, scenario, sound devices, identity), 1 for failures on the
way to or at the server (unreachable, refused, no hello, no reply).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.cli import flags
from server.config import Settings
from server.protocol.messages import LISTEN_MODES, ListenMode
from simulator.audio_devices import AudioDevice, describe_devices, list_devices, pick_device
from simulator.errors import SimulatorError
from simulator.identity import DeviceIdentity, load_identity
from simulator.inputs import FileSource
from simulator.load import EncodedSpeech, LoadInput, run_load
from simulator.metrics import summarize
from simulator.microphone import Microphone
from simulator.ota import DEFAULT_APP_VERSION, DEFAULT_BOARD
from simulator.recorder import ConversationRecorder
from simulator.scenario import Scenario, load_scenario, run_scenario, summary_line
from simulator.session import (
    DEFAULT_WAKE_WORD,
    WAKE_GRACE_S,
    ConnectOptions,
    DeviceSession,
    Keyboard,
    create_client,
    is_ota_url,
)
from simulator.speaker import Speaker
from simulator.terminal import Terminal

__all__ = ["add_sim_parser", "cmd_sim"]

EXIT_USAGE = 2
EXIT_FAILED = 1
IDENTITY_DIR_ENV = "XIAOZHI_SIM_DIR"

EXAMPLES = """\
examples:
  xiaozhi sim http://127.0.0.1:8003/xiaozhi/ota/          talk through the microphone (OTA first, like a device)
  xiaozhi sim ws://127.0.0.1:8000/xiaozhi/v1/ --text hello --text "what time is it"
  xiaozhi sim ws://HOST:8000/xiaozhi/v1/ --file question.wav --record conversation.wav --no-speaker
  xiaozhi sim ws://HOST:8000/xiaozhi/v1/ --mic --mode manual     push-to-talk with Enter
  xiaozhi sim ws://HOST:8000/xiaozhi/v1/ --scenario demo.yaml    unattended, exit code for CI
  xiaozhi sim ws://HOST:8000/xiaozhi/v1/ --devices 50 --text hello --repeat 3   load test with a report
  xiaozhi sim --list-devices

where servers listen (OTA URL / WebSocket URL):
  ours and the Python reference server   http://HOST:8003/xiaozhi/ota/   ws://HOST:8000/xiaozhi/v1/
  Go server (hackers365)                  http://HOST:8989/xiaozhi/ota/   ws://HOST:8989/xiaozhi/v1/
  Go server (AnimeAIChat)                 http://HOST:8080/api/ota/       ws://HOST:PORT/  (its WebSocket port)
  the public reference servers speak binary protocol version 1 only (raw opus): a 2 or 3 falls back to it
"""


class UsageError(SimulatorError):
    """Something the user gave is wrong (exit 2)."""


class _Ordered(argparse.Action):
    """--text and --file keep their command-line order in ``args.inputs``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        inputs = list(getattr(namespace, "inputs", None) or [])
        inputs.append((self.dest, values))
        namespace.inputs = inputs


def add_sim_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate an ESP32 device (microphone, files, text, scenarios, load) against any xiaozhi server",
        description="A simulated ESP32 xiaozhi device against any xiaozhi server (ours, the Python or Go reference "
        "servers): microphone and keyboard, audio files, typed text, YAML scenarios, or N devices at once.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("server", nargs="?", metavar="SERVER",
                   help="OTA URL (http://HOST:8003/xiaozhi/ota/: asked first, like a device) or WebSocket URL "
                        "(ws://HOST:8000/xiaozhi/v1/)")  # fmt: skip
    p.set_defaults(inputs=[], run=cmd_sim)

    conn = p.add_argument_group("connection")
    conn.add_argument("--token", help="bearer token for a WebSocket URL (an OTA answer brings its own)")
    conn.add_argument("--protocol-version", type=int, choices=[1, 2, 3],
                      help="binary protocol version (default: the OTA answer's, else 1)")  # fmt: skip
    conn.add_argument(
        "--identity",
        default="default",
        metavar="NAME",
        help="which remembered device identity (MAC + client id) to be; a new name makes a new device",
    )
    conn.add_argument(
        "--identity-dir",
        metavar="DIR",
        help=f"where identities are kept (default ${IDENTITY_DIR_ENV}, else <data_dir>/simulator)",
    )
    conn.add_argument("--board", default=DEFAULT_BOARD, help="board name sent to the OTA endpoint and as MCP server")
    conn.add_argument("--app-version", default=DEFAULT_APP_VERSION, help="firmware version sent to the OTA endpoint")
    conn.add_argument(
        "--hello-timeout",
        type=flags.positive_float,
        default=10.0,
        metavar="S",
        help="wait this long for the server hello (firmware: 10 s)",
    )
    conn.add_argument("--activation-timeout", type=flags.positive_float, default=300.0, metavar="S",
                      help="how long to wait for an activation code to be entered")  # fmt: skip

    inp = p.add_argument_group("input (text and files are played in the order given)")
    inp.add_argument("--text", action=_Ordered, metavar="TEXT", help="type this (listen detect); repeatable")
    inp.add_argument("--file", action=_Ordered, metavar="AUDIO", help="speak this audio file; repeatable")
    inp.add_argument(
        "--wake-word",
        nargs="?",
        const=DEFAULT_WAKE_WORD,
        metavar="WORD",
        help=f"say the wake word first (default {DEFAULT_WAKE_WORD})",
    )
    inp.add_argument(
        "--mic",
        action="store_true",
        help="talk through the microphone (the default when no --text/--file/--scenario is given)",
    )
    inp.add_argument("--input-device", metavar="DEV", help="microphone: index or name (see --list-devices)")
    inp.add_argument(
        "--mode",
        choices=LISTEN_MODES,
        help="auto: the server hears the end of speech; manual: push-to-talk with Enter; realtime: "
        "the mic stays on while the device speaks (default auto)",
    )
    inp.add_argument("--scenario", metavar="FILE.yaml", help="play a YAML scenario unattended; exit 0 if it passed")

    out = p.add_argument_group("output")
    out.add_argument("--no-speaker", action="store_true", help="do not play replies")
    out.add_argument("--output-device", metavar="DEV", help="speaker: index or name (see --list-devices)")
    out.add_argument("--record", metavar="FILE.wav", help="record the conversation: left = mic, right = speaker")
    out.add_argument(
        "--jitter-frames",
        type=int,
        choices=[2, 3, 4],
        default=3,
        help="frames the player buffers before it starts (the queue holds at most 40)",
    )
    out.add_argument("--quiet", action="store_true", help="no subtitles, only problems and figures")
    out.add_argument("--verbose", action="store_true", help="also show state changes")

    run = p.add_argument_group("running")
    run.add_argument("--timeout", type=flags.positive_float, default=60.0, metavar="S", help="wait this long per reply")
    run.add_argument("--turns", type=flags.positive_int, metavar="N", help="microphone: stop after N replies")
    run.add_argument("--duration", type=flags.positive_float, metavar="S", help="microphone: stop after S seconds")
    run.add_argument(
        "--devices",
        type=flags.positive_int,
        default=1,
        metavar="N",
        help="load mode: N devices from this process, a latency and error report at the end",
    )
    run.add_argument("--repeat", type=flags.positive_int, default=1, metavar="N",
                     help="load mode: play the inputs N times")  # fmt: skip
    run.add_argument("--ramp", type=float, metavar="S", help="load mode: spread device starts over S seconds")
    run.add_argument("--list-devices", action="store_true", help="list sound devices and exit")  # fmt: skip


# ---- the command ------------------------------------------------------------------------------------------


async def cmd_sim(args: argparse.Namespace, settings: Settings) -> int:
    for name in ("websockets", "httpx"):  # failures are reported as one line each; requests need no log
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return await _sim(args, settings)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _usage(call: Any, *a: Any, **kw: Any) -> Any:
    """Run ``call``; its SimulatorError is the user's to fix (exit 2)."""
    try:
        return call(*a, **kw)
    except UsageError:
        raise
    except SimulatorError as exc:
        raise UsageError(str(exc)) from None


def _identity(args: argparse.Namespace, settings: Settings) -> DeviceIdentity:
    folder = args.identity_dir or os.environ.get(IDENTITY_DIR_ENV) or Path(settings.data_dir) / "simulator"
    return _usage(load_identity, Path(folder).expanduser(), args.identity)


def _sources(args: argparse.Namespace) -> list[tuple[str, str | FileSource]]:
    inputs: list[tuple[str, str | FileSource]] = []
    for kind, value in args.inputs:
        if kind == "file":
            inputs.append(("file", _usage(FileSource, Path(value).expanduser())))
        elif not str(value).strip():
            raise UsageError("--text needs some text")
        else:
            inputs.append(("text", value))
    return inputs


def _speaker(args: argparse.Namespace, terminal: Terminal, devices: list[AudioDevice] | None) -> Speaker | None:
    if args.no_speaker:
        return None
    if args.output_device is not None:
        return Speaker(_usage(pick_device, args.output_device, "output", devices))
    try:
        return Speaker(pick_device(None, "output", devices))
    except SimulatorError as exc:
        terminal.note(f"note: replies are not played: {exc}")
        return None


def _recorder(args: argparse.Namespace) -> ConversationRecorder | None:
    return ConversationRecorder(Path(args.record).expanduser()) if args.record else None


def _devices_or_none(terminal: Terminal) -> list[AudioDevice] | None:
    try:
        return list_devices()
    except SimulatorError as exc:
        terminal.note(f"note: {exc}")
        return []


async def _sim(args: argparse.Namespace, settings: Settings) -> int:
    terminal = Terminal(quiet=args.quiet, verbose=args.verbose)
    if args.list_devices:
        for line in describe_devices(list_devices()):
            print(line)
        return 0
    scenario: Scenario | None = _usage(load_scenario, args.scenario) if args.scenario else None
    if scenario is not None and args.inputs:
        raise UsageError("give either --scenario or --text/--file inputs, not both")
    server = args.server or (scenario.server if scenario else None)
    if not server:
        raise UsageError("give the server: an OTA URL (http://HOST:8003/xiaozhi/ota/) or ws://HOST:8000/xiaozhi/v1/")
    if not is_ota_url(server) and not server.lower().startswith(("ws://", "wss://")):
        raise UsageError(
            f"server must be an OTA URL (http://HOST:8003/xiaozhi/ota/) or a WebSocket URL "
            f"(ws://HOST:8000/xiaozhi/v1/), got {server!r}"
        )
    mode: ListenMode = args.mode or (scenario.mode if scenario else "auto")
    if scenario is not None:
        scenario.mode = mode
    version = args.protocol_version or (scenario.protocol_version if scenario else None)  # None: OTA's, else 1
    inputs = _sources(args)
    identity = _identity(args, settings)
    options = ConnectOptions(
        server=server, identity=identity, token=args.token, protocol_version=version, board=args.board,
        app_version=args.app_version, hello_timeout_s=args.hello_timeout, jitter_frames=args.jitter_frames,
        activation_timeout_s=args.activation_timeout,
    )  # fmt: skip
    if args.devices > 1:
        return await _load(args, options, inputs, scenario, mode, terminal)

    live = args.mic or args.input_device is not None or (not inputs and scenario is None)
    needs_sound = live or not args.no_speaker
    devices = _devices_or_none(terminal) if needs_sound else []
    microphone: Microphone | None = None
    if args.mic or args.input_device is not None:
        microphone = Microphone(_usage(pick_device, args.input_device, "input", devices))
    elif live:
        try:
            microphone = Microphone(pick_device(None, "input", devices))
        except SimulatorError as exc:
            terminal.note(f"note: no microphone ({exc}): type what you want to say")
    speaker = _speaker(args, terminal, devices)
    recorder = _recorder(args)
    options.recorder = recorder

    client = await create_client(options, terminal)
    session = DeviceSession(client, terminal, speaker, mode=mode, reply_timeout_s=args.timeout)
    terminal.note(f"device {identity.device_id} (protocol v{client.version}) → {client.url}")
    try:
        await session.start()
        terminal.note(f"connected: session {client.session_id or '(none)'}")
        if scenario is not None:
            return await _scenario(session, scenario, terminal)
        if args.wake_word:
            await session.wake(args.wake_word, reply_grace_s=WAKE_GRACE_S)
        for kind, value in inputs:
            if kind == "text":
                assert isinstance(value, str)
                await session.say_text(value)
            else:
                assert isinstance(value, FileSource)
                await session.speak(value, value.path.name)
        if live:
            await _live(args, session, microphone)
    finally:
        await session.close()
        if microphone is not None:
            microphone.close()
        if recorder is not None:
            path = recorder.close()
            terminal.note(f"recorded the conversation to {path} ({recorder.duration_s:.1f} s)")
    if session.reports and (len(session.reports) > 1 or args.quiet):
        for line in summarize(session.reports).lines():
            terminal.say(f"summary: {line}")
    for failure in session.failures[1:]:
        terminal.note(f"also failed: {failure}")
    if session.failures:
        raise (
            SimulatorError(session.failures[0])
            if len(session.failures) == 1
            else SimulatorError(f"{len(session.failures)} inputs got no reply; first: {session.failures[0]}")
        )
    return 0


def _on_sigint(loop: asyncio.AbstractEventLoop, callback: Any) -> bool:
    """Handle Ctrl+C ourselves (False where signals cannot be handled: not the main thread)."""
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (RuntimeError, ValueError):
        return False
    return True


async def _live(args: argparse.Namespace, session: DeviceSession, microphone: Microphone | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    wanted = args.turns
    replies = len(session.reports)

    def counted(_report: object) -> None:
        if wanted is not None and len(session.reports) - replies >= wanted:
            stop.set()

    session.on_turn = counted
    handled = _on_sigint(loop, stop.set)  # Ctrl+C ends the conversation cleanly
    timer = loop.call_later(args.duration, stop.set) if args.duration else None
    try:
        keyboard = Keyboard()
        if microphone is not None:
            async with microphone:
                if not await microphone.wait_ready():
                    session.terminal.note("warning: the microphone delivers no audio yet (muted, or busy elsewhere?)")
                session.terminal.note(f"microphone: {microphone.device} at {microphone.rate} Hz")
                await session.live(microphone, keyboard, stop)
        else:
            await session.live(None, keyboard, stop)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
        if timer is not None:
            timer.cancel()
    got = len(session.reports) - replies
    if wanted is not None and got < wanted:
        session.failures.append(f"{got} of {wanted} replies within {args.duration:g} s" if args.duration
                                else f"{got} of {wanted} replies before the end")  # fmt: skip


async def _scenario(session: DeviceSession, scenario: Scenario, terminal: Terminal) -> int:
    results = await run_scenario(session, scenario, lambda r: terminal.say(r.line()))
    print(summary_line(scenario, results), flush=True)
    reports = [r.report for r in results if r.report is not None]
    if reports:
        for line in summarize(reports).lines():
            terminal.say(f"summary: {line}")
    return 0 if all(r.passed for r in results) else EXIT_FAILED


async def _load(
    args: argparse.Namespace, options: ConnectOptions, inputs: Sequence[tuple[str, str | FileSource]],
    scenario: Scenario | None, mode: ListenMode, terminal: Terminal,
) -> int:  # fmt: skip
    if args.mic or args.input_device is not None:
        raise UsageError("load mode (--devices) plays --text, --file or --scenario, not the microphone")
    if args.record:
        raise UsageError("--record records one device; it cannot be combined with --devices")
    if not inputs and scenario is None:
        raise UsageError("load mode (--devices) needs --text, --file or --scenario")
    load_inputs = [
        LoadInput("text", text=value) if isinstance(value, str) else
        LoadInput("speech", speech=EncodedSpeech.encode(value, value.path.name))
        for _, value in inputs
    ]  # fmt: skip
    terminal.note(f"load: {args.devices} devices → {options.server}")
    stop_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert stop_task is not None
    handled = _on_sigint(loop, stop_task.cancel)
    try:
        report = await run_load(
            options, args.devices, inputs=load_inputs, scenario=scenario, repeat=args.repeat, ramp_s=args.ramp,
            mode=mode, timeout=args.timeout, progress=terminal.note,
        )  # fmt: skip
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
    for line in report.lines():
        print(line, flush=True)
    return 0 if report.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulator.cli …`` = ``xiaozhi sim …`` (without the config file)."""
    parser = argparse.ArgumentParser(prog="xiaozhi")
    add_sim_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(cmd_sim(args, Settings()))
    return 130


if __name__ == "__main__":
    sys.exit(main())
