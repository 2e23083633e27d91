"""The simulator panel: start a simulated device from a microphone (device picker) or an audio file, in auto
or push-to-talk mode, against the console's own device server; a push-to-talk button, its state and its
subtitles. Its conversation appears live in the live view and the session list like any device's."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from console.domain.player import refresh_devices
from console.domain.simulated_device import SimulatedDevice, SimulatorChoice, microphones
from simulator.errors import SimulatorError

RunJob = Callable[[str, Coroutine[Any, Any, Any]], object]
REFRESH_MS = 200


class SimulatorPanel(QWidget):
    def __init__(self, run_job: RunJob, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_job = run_job
        self.server_url: Callable[[], str | None] = lambda: None
        self.on_started: Callable[[SimulatedDevice], None] | None = None  # e.g. select it in the live view
        self.device: SimulatedDevice | None = None
        self._shown = -1

        self.use_mic = QRadioButton("Microphone")
        self.use_file = QRadioButton("Audio file")
        self.use_file.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.use_mic)
        group.addButton(self.use_file)
        self.mic_list = QComboBox()
        self.refresh_mics = QPushButton("Refresh")
        self.refresh_mics.clicked.connect(lambda: self.list_microphones(rescan=True))
        self.file = QLineEdit(placeholderText="a WAV/FLAC/OGG/MP3 file spoken into the device's microphone")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.mode = QComboBox()
        self.mode.addItem("auto (the server hears when you stop)", "auto")
        self.mode.addItem("push to talk", "manual")
        self.speaker = QCheckBox("play the replies", checked=True)
        self.start_button = QPushButton("Start device")
        self.stop_button = QPushButton("Stop")
        self.talk_button = QPushButton("Push to talk (hold)")
        self.speak_file_button = QPushButton("Speak the file")
        self.text = QLineEdit(placeholderText="or type what the user says, Enter to send")
        self.status = QLabel("not started")
        self.subtitles = QPlainTextEdit(readOnly=True)
        self.subtitles.setMaximumBlockCount(500)

        mic_row = QHBoxLayout()
        mic_row.addWidget(self.use_mic)
        mic_row.addWidget(self.mic_list, 1)
        mic_row.addWidget(self.refresh_mics)
        file_row = QHBoxLayout()
        file_row.addWidget(self.use_file)
        file_row.addWidget(self.file, 1)
        file_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("mode", self.mode)
        form.addRow("", self.speaker)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.stop_button, self.talk_button, self.speak_file_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(mic_row)
        layout.addLayout(file_row)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.text)
        layout.addWidget(self.status)
        layout.addWidget(self.subtitles, 1)

        self.start_button.clicked.connect(self.start_clicked)
        self.stop_button.clicked.connect(self.stop_clicked)
        self.talk_button.pressed.connect(lambda: self._device_job("push to talk", "press"))
        self.talk_button.released.connect(lambda: self._device_job("push to talk", "release"))
        self.speak_file_button.clicked.connect(lambda: self._device_job("speak the file", "speak_file"))
        self.text.returnPressed.connect(self._send_text)
        for w in (self.use_mic, self.use_file):
            w.toggled.connect(lambda _on: self.update_enabled())
        self.mode.currentIndexChanged.connect(lambda _i: self.update_enabled())
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()
        self.list_microphones()
        self.update_enabled()

    # ---- choices ------------------------------------------------------------------------------------

    def list_microphones(self, rescan: bool = False) -> None:
        if rescan and self.device is None:  # never under a running device's open mic and speaker streams
            refresh_devices()  # PortAudio reads the device list once: re-read it
        devices, note = microphones()
        self.mic_list.clear()
        for d in devices:
            self.mic_list.addItem(f"{d.name} ({d.host_api})" + (" — default" if d.default_input else ""), d.index)
        if not devices:
            self.mic_list.addItem(note, None)
        self.use_mic.setEnabled(bool(devices))
        if not devices:
            self.use_file.setChecked(True)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Audio to speak", "", "Audio (*.wav *.flac *.ogg *.opus *.mp3)")
        if path:
            self.file.setText(path)

    def choice(self) -> SimulatorChoice:
        text = self.file.text().strip()
        return SimulatorChoice(
            source="microphone" if self.use_mic.isChecked() else "file", microphone=self.mic_list.currentData(),
            file=Path(text) if text else None, mode=self.mode.currentData(), speaker=self.speaker.isChecked(),
        )  # fmt: skip

    # ---- actions ------------------------------------------------------------------------------------

    def start_clicked(self) -> None:
        url = self.server_url()
        if url is None or self.device is not None:
            return
        device = SimulatedDevice(url, self.choice())
        self.device = device
        self._shown = -1
        self.run_job("start the simulated device", self._start(device))
        self.update_enabled()

    async def _start(self, device: SimulatedDevice) -> None:
        try:
            await device.start()
        except BaseException:
            await device.stop()
            if self.device is device:
                self.device = None
            self.update_enabled()
            raise
        if self.on_started is not None:
            self.on_started(device)
        self.update_enabled()
        if device.choice.source == "file":
            try:
                await device.speak_file()  # a file is spoken once at start; "Speak the file" says it again
            except SimulatorError:
                if self.device is device:  # stopped meanwhile: not a failure
                    raise

    def stop_clicked(self) -> None:
        device, self.device = self.device, None
        if device is not None:
            self.run_job("stop the simulated device", device.stop())
        self.update_enabled()

    def _device_job(self, what: str, method: str) -> None:
        if self.device is not None:
            self.run_job(what, getattr(self.device, method)())

    def _send_text(self) -> None:
        text = self.text.text().strip()
        if text and self.device is not None:
            self.text.clear()
            self.run_job("say", self.device.say_text(text))

    async def close(self) -> None:
        self.timer.stop()
        device, self.device = self.device, None
        if device is not None:
            await device.stop()

    # ---- the timer's redraw -------------------------------------------------------------------------

    def update_enabled(self) -> None:
        running = self.device is not None
        manual = self.mode.currentData() == "manual"
        self.start_button.setEnabled(not running and self.server_url() is not None)
        self.stop_button.setEnabled(running)
        self.talk_button.setEnabled(running and self.device is not None and self.device.choice.source == "microphone"
                                    and self.device.choice.mode == "manual")  # fmt: skip
        self.talk_button.setToolTip("" if manual else "choose push to talk, then start the device")
        self.speak_file_button.setEnabled(running and self.device is not None and self.device.choice.source == "file")
        self.text.setEnabled(running)
        for w in (self.use_mic, self.use_file, self.mic_list, self.file, self.mode, self.speaker):
            w.setEnabled(not running and (w is not self.use_mic or self.mic_list.currentData() is not None))

    def redraw(self) -> None:
        device = self.device
        if device is None:
            if self.status.text() != "not started":
                self.status.setText("not started")
            self.start_button.setEnabled(self.server_url() is not None)
            return
        text = f"{device.device_id} · {device.state}" + (f" · session {device.session_id}" if device.session_id else "")
        if device.talking:
            text += " · talking"
        if self.status.text() != text:
            self.status.setText(text)
        if device.terminal.version != self._shown:
            self._shown = device.terminal.version
            self.subtitles.setPlainText("\n".join(device.terminal.lines))
            bar = self.subtitles.verticalScrollBar()
            bar.setValue(bar.maximum())
