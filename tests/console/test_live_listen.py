"""Listen-in and operator commands against the real in-process device server and a simulated device: the
console hears the device's real uplink and downlink frames (decoded off the GUI thread), plays them when
there is a sound server (a private PulseAudio null sink) and still shows the waveform when there is none."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PySide6.QtCore import Qt

from console.domain.player import refresh_devices
from simulator.client import DeviceClient
from simulator.events import Alert, Disconnected
from simulator.identity import DeviceIdentity
from simulator.inputs import PcmSource, speak
from tests.console.conftest import QLoop
from tests.support.sim import NO_SOUND, private_pulseaudio


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (9000 * np.sin(2 * np.pi * 330 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)


def test_listen_in_uplink_and_downlink_and_operator_commands(
    served_console: Any, qloop: QLoop, qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = served_console
    live = app.live
    panel = live.panel
    client = DeviceClient(app.backend.endpoints.websocket_url, DeviceIdentity.generate())
    qloop.run(client.connect(), 30)
    device_id = client.identity.device_id
    try:
        qloop.until(lambda: device_id in live.state.devices)
        live.select_device(device_id)
        qloop.until(lambda: panel.device is not None and panel.device.device_id == device_id)
        row = live.state.order.index(device_id)
        # state, protocol and codec come from DeviceServer.devices() (read once a second)
        qloop.until(lambda: live.model.index(row, 2).data() == "v1" and "opus" in live.model.index(row, 3).data())

        # ---- uplink, no sound server: decoded, counted, drawn; the note says there is no output ----------
        panel.direction.setCurrentIndex(panel.direction.findData("uplink"))
        qtbot.mouseClick(panel.listen_button, Qt.MouseButton.LeftButton)
        assert panel.listen_button.isChecked() and panel.listen is not None
        listen = panel.listen
        qloop.run(speak(client, PcmSource(_tone(1.2)), "manual", realtime=False), 30)
        sent = client.stats.packets_sent
        qloop.until(lambda: listen.frames_decoded >= sent, 15)
        assert listen.frames_received == sent, "every uplink frame the device sent, and no other"
        assert listen.bad_packets == 0 and listen.sample_rate == 16000
        qloop.until(lambda: panel.scope.peak > 4000)  # the tone's real amplitude, decoded from the real frames
        assert "no output device" in panel.listen_note.text()
        qtbot.mouseClick(panel.listen_button, Qt.MouseButton.LeftButton)
        assert panel.listen is None
        qloop.until(lambda: not app.backend.live.wants_audio(device_id))  # the server stops producing frames

        # ---- downlink through a private PulseAudio null sink: really played through the jitter buffer ----
        with private_pulseaudio() as pulse:
            monkeypatch.setenv("PULSE_SERVER", pulse.server)
            monkeypatch.setenv("PULSE_SINK", pulse.sink)
            refresh_devices()
            panel.direction.setCurrentIndex(panel.direction.findData("downlink"))
            panel.listen_button.setChecked(True)
            listen = panel.listen
            assert listen is not None
            out_before = next(d for d in app.backend.device_server.devices() if d["device_id"] == device_id)
            qloop.run(client.say("hello"), 90)
            out_after = next(d for d in app.backend.device_server.devices() if d["device_id"] == device_id)
            sent_down = out_after["frames_out"] - out_before["frames_out"]
            assert sent_down > 0
            qloop.until(lambda: listen.frames_decoded >= sent_down, 15)
            assert listen.frames_received == sent_down and listen.sample_rate == 24000
            assert "playing the downlink" in listen.note, listen.note
            qloop.until(lambda: listen.jitter is not None and listen.jitter.played > 24000 * 0.3, 10)
            panel.listen_button.setChecked(False)
            qloop.until(lambda: not app.backend.live.wants_audio(device_id))
            qloop.until(lambda: not listen.output_open)  # closed before its sound server goes away
        monkeypatch.setenv("PULSE_SERVER", NO_SOUND)
        assert refresh_devices(), "no stream is open any more"

        # ---- operator commands -----------------------------------------------------------------------
        events = client.events()
        panel.alert_text.setText("maintenance at noon")
        qtbot.mouseClick(panel.command_buttons["alert"], Qt.MouseButton.LeftButton)
        alert = qloop.run(events.next(Alert, timeout=10))
        assert alert.message == "maintenance at noon"
        qloop.until(lambda: "operator: alert maintenance at noon" in live.transcript.toPlainText())
        panel.command_buttons["goodbye"].click()
        qloop.run(events.next(Disconnected, timeout=10))
        qloop.until(lambda: live.state.devices[device_id].state == "disconnected")
        qloop.until(lambda: not panel.command_buttons["goodbye"].isEnabled())
    finally:
        qloop.run(client.close(), 15)
