"""Load mode: many simulated devices from one process against our real server, with the latency and error
report at the end and an exit code that says whether every device got every reply."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config import DatabaseSettings, EventSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.runtime import StorageRuntime
from tests.support.sim import espeak_wav, run_sim, run_sim_here, sim_env
from tests.support.waiting import wait_until


@pytest.fixture
async def server(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[DeviceServer]:
    settings = Settings(database=db, data_dir=tmp_path, events=EventSettings(replay_interval_s=0.05),
                        server=ServerSettings(host="127.0.0.1", port=0, http_port=0))  # fmt: skip
    async with StorageRuntime(settings) as runtime:
        srv = DeviceServer(settings, runtime=runtime)
        await srv.start()
        yield srv
        await srv.stop()


async def test_twenty_devices_text_turns_report(
    server: DeviceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "id"))
    run = await run_sim_here(capsys, server.ota_url(), "--devices", "20", "--text", "hello", "--repeat", "2",
                             "--ramp", "1")  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "load: 20 devices in" in run.stdout and "20 connected" in run.stdout
    assert "40 turns answered, 0 failed" in run.stdout
    assert "replies: 40 (40 with audio, 0 interrupted)" in run.stdout
    latency = r"first audio: p50 \d+ ms, p90 \d+ ms, p99 \d+ ms, max \d+ ms \(40 measured\)"
    assert re.search(latency, run.stdout), run.stdout
    assert re.search(r"frames: \d+ received, \d+ played, 0 dropped", run.stdout), run.stdout
    assert "errors: none" in run.stdout
    await wait_until(lambda: not server.ctx.connections, timeout=10)  # type: ignore[union-attr]  # all closed


async def test_spoken_files_from_several_devices_in_a_real_process(server: DeviceServer, tmp_path: Path) -> None:
    wav = espeak_wav(tmp_path / "q.wav", "what time is it")
    run = await run_sim(server.websocket_url(), "--devices", "3", "--file", str(wav), "--protocol-version", "3",
                        env=sim_env(tmp_path), timeout=90)  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "3 connected" in run.stdout and "3 turns answered, 0 failed" in run.stdout
    assert "(3 measured)" in run.stdout


async def test_unreachable_devices_are_counted_as_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "id"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = await run_sim_here(capsys, f"ws://127.0.0.1:{port}/xiaozhi/v1/", "--devices", "5", "--text", "hi")
    assert run.returncode == 1
    assert "0 connected" in run.stdout and "errors (5):" in run.stdout
    assert re.search(r"5× connect: cannot connect to ws://127\.0\.0\.1:\d+/xiaozhi/v1/", run.stdout), run.stdout
    assert "Traceback" not in run.stderr
