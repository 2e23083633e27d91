"""The simulator's microphone and speaker for real, through PulseAudio: speech played into a null sink is
recorded from the sink's monitor by ``xiaozhi sim --mic`` (PortAudio → ALSA → PulseAudio, no mock), streamed
to our server, and the server hears the words; the reply played on the speaker reaches the sound server.
The daemon is the test session's own (tests/support/sim.py); without PulseAudio installed these fail."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from server.config import DatabaseSettings, EventSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.runtime import StorageRuntime
from tests.support.sim import Pulse, assert_one_line_error, espeak_wav, private_pulseaudio, run_sim, sim_env
from tests.support.speech import heard_as


@pytest.fixture(scope="module")
def pulse() -> Iterator[Pulse]:
    with private_pulseaudio() as daemon:
        yield daemon


@pytest.fixture
async def server(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[DeviceServer]:
    settings = Settings(database=db, data_dir=tmp_path, events=EventSettings(replay_interval_s=0.05),
                        server=ServerSettings(host="127.0.0.1", port=0, http_port=0))  # fmt: skip
    async with StorageRuntime(settings) as runtime:
        srv = DeviceServer(settings, runtime=runtime)
        await srv.start()
        yield srv
        await srv.stop()


async def test_speech_into_the_microphone_is_heard_by_the_server(
    server: DeviceServer, pulse: Pulse, tmp_path: Path
) -> None:
    wav = espeak_wav(tmp_path / "question.wav", "what time is it")
    env = sim_env(tmp_path, **pulse.env())
    argv = [sys.executable, "-m", "server.cli.main", "sim", server.websocket_url(), "--mic", "--input-device",
            "pulse", "--no-speaker", "--turns", "1", "--duration", "40"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None and proc.stdout is not None
    notes = []
    try:
        async with asyncio.timeout(30):
            while not any(line.startswith("listening") for line in notes):
                line = (await proc.stderr.readline()).decode()
                assert line, f"the simulator exited early: {''.join(notes)}"
                notes.append(line)
        assert any("microphone: 0 'pulse'" in n or "'pulse'" in n for n in notes), notes
        await asyncio.sleep(0.5)
        play = await asyncio.create_subprocess_exec(
            "paplay", "--server", pulse.server, "--device", pulse.sink, str(wav)
        )
        assert await play.wait() == 0
        out, err = await asyncio.wait_for(proc.communicate(), 45)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stdout, stderr = out.decode(), "".join(notes) + err.decode()
    assert proc.returncode == 0, (stdout, stderr)
    heard = [line for line in stdout.splitlines() if line.startswith("you: ")]
    assert heard and heard_as(heard[0].removeprefix("you: "), "what time is it"), stdout
    assert "xiaozhi: " in stdout and "first audio" in stdout, stdout
    assert "Traceback" not in stderr


async def test_the_reply_is_played_on_the_speaker(server: DeviceServer, pulse: Pulse, tmp_path: Path) -> None:
    recording = tmp_path / "sink.raw"
    with recording.open("wb") as sink_out:
        parec = await asyncio.create_subprocess_exec(
            "parec", "--server", pulse.server, "--device", pulse.monitor, "--raw", "--format=s16le", "--rate=16000",
            "--channels=1", "--latency-msec=20", stdout=sink_out,
        )  # fmt: skip
        try:
            run = await run_sim(server.websocket_url(), "--text", "hello", "--output-device", "pulse",
                                env=sim_env(tmp_path, **pulse.env()))  # fmt: skip
        finally:
            parec.terminate()
            await parec.wait()
    assert run.returncode == 0, run.stderr
    assert "xiaozhi: Hello" in run.stdout
    audio = np.frombuffer(recording.read_bytes(), dtype=np.int16)
    loud = np.abs(audio.astype(np.int32)) > 1000
    assert loud.sum() > 16000 * 0.3, f"only {loud.sum() / 16000:.2f} s of audible reply reached the sound server"


async def test_devices_are_listed_and_a_missing_one_is_a_clear_error(
    server: DeviceServer, pulse: Pulse, tmp_path: Path
) -> None:
    env = sim_env(tmp_path, **pulse.env())
    listing = await run_sim("--list-devices", env=env)
    assert listing.returncode == 0 and "pulse" in listing.stdout, listing
    missing = await run_sim(server.websocket_url(), "--mic", "--input-device", "no-such-mic", env=env)
    line = assert_one_line_error(missing, 2, r"no audio input device named 'no-such-mic'; inputs: .*'pulse'")
    assert "pulse" in line


async def test_push_to_talk_from_the_keyboard(server: DeviceServer, pulse: Pulse, tmp_path: Path) -> None:
    wav = espeak_wav(tmp_path / "q.wav", "what time is it")
    argv = [sys.executable, "-m", "server.cli.main", "sim", server.websocket_url(), "--mic", "--input-device",
            "pulse", "--mode", "manual", "--no-speaker", "--turns", "1", "--duration", "40"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, env=sim_env(tmp_path, **pulse.env()), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    notes = []

    async def note(prefix: str) -> None:
        async with asyncio.timeout(30):
            while not any(line.startswith(prefix) for line in notes):
                line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
                assert line, f"the simulator exited early: {''.join(notes)}"
                notes.append(line)

    try:
        await note("manual mode: press Enter to talk")
        proc.stdin.write(b"\n")  # press: listen start (manual)
        await note("(talk now")
        play = await asyncio.create_subprocess_exec(
            "paplay", "--server", pulse.server, "--device", pulse.sink, str(wav)
        )
        assert await play.wait() == 0
        await asyncio.sleep(0.3)
        proc.stdin.write(b"\n")  # release: listen stop, the server transcribes what it got
        await note("(stopped talking)")
        out, err = await asyncio.wait_for(proc.communicate(), 45)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (out.decode(), "".join(notes), err.decode())
    heard = [line for line in out.decode().splitlines() if line.startswith("you: ")]
    assert heard and heard_as(heard[0].removeprefix("you: "), "what time is it"), out.decode()
