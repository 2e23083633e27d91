"""The simulator panel: a simulated device started from a file (and from a microphone fed by a private
PulseAudio null sink) talks to the console's own device server; its session appears in the session list and
its events in the live view, with no mocks anywhere (real server, PostgreSQL, S3, opus, PortAudio)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from console.domain.player import refresh_devices
from tests.console.conftest import QLoop
from tests.support.sim import NO_SOUND, espeak_wav, private_pulseaudio


def test_simulated_device_from_a_file_appears_in_sessions_and_live_view(
    served_console: Any, qloop: QLoop, qtbot: Any, tmp_path: Path
) -> None:
    app = served_console
    panel = app.simulator
    app.window.show_view("simulator")
    wav = espeak_wav(tmp_path / "question.wav", "hello, what is the weather like today?")
    assert not panel.use_mic.isEnabled(), "no sound server in this test: no microphone to pick"
    panel.use_file.setChecked(True)
    panel.file.setText(str(wav))
    panel.mode.setCurrentIndex(panel.mode.findData("auto"))
    assert panel.start_button.isEnabled()
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qloop.until(lambda: panel.device is not None and panel.device.session_id != "", 30)
    device = panel.device
    qloop.until(lambda: f"session {device.session_id}" in panel.status.text())
    sessions = app.window.sessions.model
    qloop.until(lambda: sessions.row_of(device.session_id) is not None, 30)  # the session list, live
    live = app.live
    qloop.until(lambda: device.device_id in live.state.devices, 10)
    qloop.until(lambda: live.state.devices[device.device_id].level_pos > 5, 20)  # its microphone's levels
    assert live.panel.device is not None and live.panel.device.device_id == device.device_id, "selected"
    qloop.until(lambda: "user: hello" in live.transcript.toPlainText().lower(), 60)  # what the server heard, live
    qloop.until(lambda: "xiaozhi:" in panel.subtitles.toPlainText(), 60)  # the reply, on the device's screen
    assert "no speaker" in panel.subtitles.toPlainText()
    qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    qloop.until(lambda: live.state.devices[device.device_id].state == "disconnected", 20)
    assert panel.device is None and panel.start_button.isEnabled()


def test_simulated_device_from_a_microphone_with_push_to_talk(
    served_console: Any, qloop: QLoop, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = served_console
    panel = app.simulator
    wav = espeak_wav(tmp_path / "mic.wav", "turn the volume up please")
    with private_pulseaudio() as pulse:
        for key, value in pulse.env().items():
            monkeypatch.setenv(key, value)
        panel.list_microphones(rescan=True)
        assert panel.use_mic.isEnabled() and panel.mic_list.currentData() is not None
        panel.use_mic.setChecked(True)
        panel.mode.setCurrentIndex(panel.mode.findData("manual"))
        panel.speaker.setChecked(False)
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        qloop.until(lambda: panel.device is not None and panel.device.session_id != "", 30)
        device = panel.device
        qloop.until(lambda: panel.talk_button.isEnabled())
        qtbot.mousePress(panel.talk_button, Qt.MouseButton.LeftButton)
        qloop.until(lambda: device.client.state == "listening", 10)
        player = subprocess.Popen(["paplay", "--server", pulse.server, "--device", pulse.sink, str(wav)])
        try:
            live = app.live
            qloop.until(lambda: device.device_id in live.state.devices, 10)
            qloop.until(lambda: device.client.stats.packets_sent > 10, 20)  # the mic streams while talking
            qloop.until(lambda: max(live.state.devices[device.device_id].levels) > 300, 20)  # the words, heard
        finally:
            player.wait(20)
        qtbot.mouseRelease(panel.talk_button, Qt.MouseButton.LeftButton)
        qloop.until(lambda: "you:" in panel.subtitles.toPlainText(), 60)
        assert device.client.state != "listening" and not device.talking, "released: the device stopped listening"
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
        qloop.until(lambda: live.state.devices[device.device_id].state == "disconnected", 20)
    monkeypatch.setenv("PULSE_SERVER", NO_SOUND)
    refresh_devices()
