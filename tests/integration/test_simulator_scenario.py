"""YAML scenarios run unattended against our real server: every kind of turn and check, barge-in, the exit
code a CI job relies on, and a failing expectation reported per turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config import DatabaseSettings, EventSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.runtime import StorageRuntime
from tests.support.sim import assert_one_line_error, espeak_wav, run_sim, run_sim_here, sim_env


@pytest.fixture
async def server(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[DeviceServer]:
    settings = Settings(database=db, data_dir=tmp_path, events=EventSettings(replay_interval_s=0.05),
                        server=ServerSettings(host="127.0.0.1", port=0, http_port=0))  # fmt: skip
    async with StorageRuntime(settings) as runtime:
        srv = DeviceServer(settings, runtime=runtime)
        await srv.start()
        yield srv
        await srv.stop()


async def test_a_scenario_passes_with_exit_code_0(server: DeviceServer, tmp_path: Path) -> None:
    espeak_wav(tmp_path / "question.wav", "what time is it")
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(
        f"""
server: {server.websocket_url()}
protocol_version: 2
timeout: 30
turns:
  - say: hello
    expect: [hello, help]
    expect_clean: true
    max_first_audio_ms: 5000
  - speak: question.wav
    expect_stt: what time
  - say: set the volume to 30
    expect_tool: self.audio_speaker.set_volume
    expect_device: {{volume: 30}}
  - pause: 0.2
  - say: tell me a long story about the sea and a lighthouse keeper and her boats
    barge_in_after_ms: 500
""",
        encoding="utf-8",
    )
    run = await run_sim("--scenario", str(scenario), "--no-speaker", env=sim_env(tmp_path), timeout=90)
    assert run.returncode == 0, (run.stdout, run.stderr)
    lines = run.stdout.splitlines()
    verdicts = [line for line in lines if line.startswith("turn ")]
    assert [v.split()[2] for v in verdicts] == ["PASS"] * 5, verdicts
    assert "turn 2 PASS speak question.wav" in run.stdout
    assert "scenario demo.yaml PASSED: 5 of 5 turns passed" in run.stdout
    assert "summary: replies: 4 (4 with audio, 1 interrupted)" in run.stdout, run.stdout


async def test_a_failed_expectation_fails_the_run(
    server: DeviceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "id"))
    scenario = tmp_path / "fail.yaml"
    scenario.write_text(
        "turns:\n"
        "  - say: hello\n    expect: goodbye forever\n    expect_tool: self.light.turn_on\n    timeout: 20\n"
        "  - say: hello\n",
        encoding="utf-8",
    )
    run = await run_sim_here(capsys, server.websocket_url(), "--scenario", str(scenario), "--no-speaker")
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "turn 1 FAIL say 'hello'" in run.stdout and "reply does not contain 'goodbye forever'" in run.stdout
    assert "; tool self.light.turn_on was not called (called: none)" in run.stdout
    assert "turn 2 PASS" in run.stdout
    assert "scenario fail.yaml FAILED: 1 of 2 turns passed" in run.stdout


async def test_a_broken_scenario_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "id"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns:\n  - sey: hello\n", encoding="utf-8")
    run = await run_sim_here(capsys, "ws://127.0.0.1:9/xiaozhi/v1/", "--scenario", str(bad))
    assert_one_line_error(run, 2, r"bad\.yaml: turn 1: unknown key 'sey'")
    missing_audio = tmp_path / "audio.yaml"
    missing_audio.write_text("turns:\n  - speak: nothing-here.wav\n", encoding="utf-8")
    run = await run_sim_here(capsys, "ws://127.0.0.1:9/xiaozhi/v1/", "--scenario", str(missing_audio))
    assert_one_line_error(run, 2, r"audio\.yaml: turn 1: cannot read audio file .*nothing-here\.wav")
