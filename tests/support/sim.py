"""Running ``xiaozhi sim`` as a real process in tests, tiny misbehaving servers, and a private PulseAudio.

Sound: every sim process gets ``PULSE_SERVER`` set.  Tests without sound point it at a socket that does not
exist, so PortAudio sees no device at all whatever the machine has (the "no sound card" case, for real);
the microphone and speaker tests point it at a PulseAudio daemon started for the test session with its own
runtime directory, a null sink, and that sink's monitor as the microphone — never the developer's own
sound server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

REPO = Path(__file__).resolve().parents[2]
NO_SOUND = "unix:/nonexistent/xiaozhi-test-no-pulse"


def espeak_wav(path: Path, text: str) -> Path:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup` (it installs packaging/system-packages.txt)")
    subprocess.run([espeak, "-v", "en", "-s", "150", "-w", str(path), text], check=True, timeout=30)
    return path


def sim_env(tmp_path: Path, pulse_server: str = NO_SOUND, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "MINIO_", "XIAOZHI_CONFIG", "PULSE_"))}
    env.update(PYTHONPATH=str(REPO), XIAOZHI_SIM_DIR=str(tmp_path / "sim-identity"), PULSE_SERVER=pulse_server)
    env.update(extra)
    return env


@dataclass
class SimRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


async def run_sim(*args: str, env: dict[str, str], stdin: str = "", timeout: float = 60) -> SimRun:
    """``xiaozhi sim ARGS`` in a child process; its output once it has exited."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli.main", "sim", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        output = f"{out.decode()}\n{err.decode()}"
        raise AssertionError(f"xiaozhi sim {' '.join(args)} did not finish in {timeout} s:\n{output}") from None
    return SimRun(proc.returncode or 0, out.decode(), err.decode())


async def run_sim_here(capsys: Any, *args: str) -> SimRun:
    """The same command in this process (on a thread: it runs its own event loop), for the many failures
    that never get as far as sound; spares a process start each.  ``capsys`` is pytest's fixture."""
    from simulator.cli import main  # = `xiaozhi sim` without the config file and the SIGTERM handler

    def call() -> int:
        try:
            return main(list(args))
        except SystemExit as exc:  # argparse
            return int(exc.code or 0)

    capsys.readouterr()
    code = await asyncio.to_thread(call)
    captured = capsys.readouterr()
    return SimRun(code, captured.out, captured.err)


def assert_one_line_error(run: SimRun, code: int, pattern: str) -> str:
    """A clean expected failure: exit ``code``, one ``error:`` line matching ``pattern``, no traceback."""
    import re

    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.error_lines) == 1, run.stderr
    assert re.search(pattern, run.error_lines[0]), run.error_lines[0]
    return run.error_lines[0]


# ---- tiny real servers that misbehave ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def silent_server(*, refuse: int | None = None, garbage: bool = False) -> AsyncIterator[str]:
    """A WebSocket server that accepts the device and never says hello (or refuses with HTTP ``refuse``,
    or says hello and then sends malformed messages, an unknown type and a broken binary frame)."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if refuse is not None:
            return connection.respond(HTTPStatus(refuse), f"{HTTPStatus(refuse).phrase.lower()}: go away\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            asked = json.loads(await ws.recv())  # the device's hello
            if garbage:
                await ws.send(json.dumps({"type": "hello", "transport": "websocket", "session_id": "s-1",
                                          "version": asked.get("version"),
                                          "audio_params": {"sample_rate": 24000, "frame_duration": 60}}))  # fmt: skip
                while "detect" not in str(await ws.recv()):  # the typed text
                    pass
                for text in ("{not json", '{"type": "tts", "state": "dance"}', '{"type": "warp"}'):
                    await ws.send(text)
                await ws.send(b"\x00\x02")
                await ws.send(json.dumps({"type": "stt", "text": "still fine", "session_id": "s-1"}))
                await ws.send(json.dumps({"type": "tts", "state": "start", "session_id": "s-1"}))
                await ws.send(json.dumps({"type": "tts", "state": "sentence_start", "text": "ok", "session_id": "s-1"}))
                await ws.send(json.dumps({"type": "tts", "state": "stop", "session_id": "s-1"}))
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/xiaozhi/v1/"


# ---- PulseAudio ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulse:
    server: str  # PULSE_SERVER value
    sink: str  # a null sink: play into it ...
    monitor: str  # ... and record it back from here

    def env(self) -> dict[str, str]:
        return {"PULSE_SERVER": self.server, "PULSE_SOURCE": self.monitor, "PULSE_SINK": self.sink}


def _pactl(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", "--server", server, *args], capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def private_pulseaudio() -> Iterator[Pulse]:
    """A PulseAudio daemon of our own (own runtime dir, null sink, killed at the end)."""
    binary = shutil.which("pulseaudio")
    if binary is None or shutil.which("pactl") is None or shutil.which("paplay") is None:
        raise RuntimeError(
            "PulseAudio is not installed (pulseaudio, pulseaudio-utils): run `make setup`, which installs "
            "packaging/system-packages.txt"
        )
    runtime = Path(tempfile.mkdtemp(prefix="xz-pulse-"))
    sink = f"xz_test_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PULSE_RUNTIME_PATH": str(runtime), "PULSE_STATE_PATH": str(runtime), "HOME": str(runtime)}
    env.pop("PULSE_SERVER", None)
    argv = [binary, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disallow-exit",
            "--load=module-native-protocol-unix auth-anonymous=1",
            f"--load=module-null-sink sink_name={sink} rate=48000", "--load=module-always-sink"]  # fmt: skip
    log = (runtime / "pulse.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    server = f"unix:{runtime}/native"
    try:
        deadline = time.monotonic() + 15
        while _pactl(server, "info").returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PulseAudio did not start: {(runtime / 'pulse.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield Pulse(server, sink, f"{sink}.monitor")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(runtime, ignore_errors=True)
