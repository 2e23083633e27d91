"""Scenario files: what is accepted, and one clear line naming the file and turn for what is not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from simulator.errors import SimulatorError
from simulator.playback import PlaybackStats
from simulator.scenario import check, load_scenario
from simulator.turns import TurnBuilder

GOOD = """
server: ws://127.0.0.1:8000/xiaozhi/v1/
protocol_version: 3
mode: manual
timeout: 20
turns:
  - hello there
  - say: set the volume to 30
    expect: ["30", volume]
    expect_tool: self.audio_speaker.set_volume
    expect_device: {volume: 30}
    expect_clean: true
    max_first_audio_ms: 1500
  - speak: q.wav
    expect_stt: time
    mode: auto
  - wake:
    reply: false
  - pause: 0.5
"""


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "what time is it"], check=True, timeout=30)
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_scenario_loads(tmp_path: Path, wav: Path) -> None:
    scenario = load_scenario(write(tmp_path, GOOD))
    assert scenario.server == "ws://127.0.0.1:8000/xiaozhi/v1/" and scenario.protocol_version == 3
    assert scenario.mode == "manual" and scenario.timeout == 20
    say, volume, speak, wake, pause = scenario.steps
    assert say.action == "say" and say.value == "hello there"
    assert volume.expect == ("30", "volume") and volume.expect_device == {"volume": 30} and volume.expect_clean
    assert speak.source is not None and speak.source.duration_s > 0.5 and speak.mode == "auto"
    assert speak.value == str(wav)
    assert wake.value == "你好小智" and wake.reply is False
    assert pause.value == 0.5 and pause.label == "pause 0.5 s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("turns: []\n", r"'turns' must be a non-empty list"),
        ("turns:\n  - sey: hi\n", r"turn 1: unknown key 'sey' \(actions: say, speak, wake, pause"),
        ("turns:\n  - {say: hi, speak: q.wav}\n", r"turn 1: needs exactly one of say, speak, wake, pause, got 2"),
        ("turns:\n  - say: hi\n  - pause: -1\n", r"turn 2: pause must be a number ≥ 0, got -1"),
        ("turns:\n  - say: hi\n    expect_device: {colour: red}\n", r"expect_device: unknown field 'colour'"),
        ("turns:\n  - say: hi\n    mode: loud\n", r"mode must be one of auto, manual, realtime, got 'loud'"),
        ("turns:\n  - say: hi\n    expect_clean: yes please\n", r"expect_clean must be true or false"),
        ("turns:\n  - speak: missing.wav\n", r"turn 1: cannot read audio file .*missing\.wav"),
        ("protocol_version: 4\nturns: [hi]\n", r"protocol_version must be 1, 2 or 3, got 4"),
        ("servr: x\nturns: [hi]\n", r"unknown key 'servr'"),
        ("turns:\n  - say: [unclosed\n", r"not valid YAML \(line 3\)"),
        ("- 42\n", r"turn 1: expected a mapping"),
    ],
)
def test_mistakes_are_one_line_naming_file_and_turn(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SimulatorError, match=message) as raised:
        load_scenario(path)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


def test_missing_file() -> None:
    with pytest.raises(SimulatorError, match=r"scenario file /nonexistent/s\.yaml does not exist"):
        load_scenario("/nonexistent/s.yaml")


def test_checks_compare_case_insensitively(tmp_path: Path) -> None:
    step = load_scenario(write(tmp_path, "turns:\n  - say: hi\n    expect: [HELLO, help]\n    expect_stt: Hi\n"))

    report = TurnBuilder(stt="hi", sentences=["Hello!", "How can I help you?"]).finish(PlaybackStats(), 1.0, "tts_stop")
    assert check(step.steps[0], report, None) == []
    report = TurnBuilder(stt="bye", sentences=["Hello!"]).finish(PlaybackStats(), 1.0, "tts_stop")
    assert check(step.steps[0], report, None) == ["reply does not contain 'help'", "the server heard 'bye', not 'Hi'"]
