"""The selected live device: its level meter, listen-in (uplink or downlink, decoded off the GUI thread and
played through a small jitter buffer), operator commands (alert, reboot, goodbye) and its live transcript.
Everything here is redrawn from the live view's one timer; nothing blocks the GUI thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from console.domain.listen import Direction, ListenIn
from console.domain.live import DeviceLive
from console.views.scope import Scope
from server.live.feed import LiveFeed

CommandSender = Callable[[str, str, str], Coroutine[Any, Any, None]]  # device, command, message


class LiveDevicePanel(QWidget):
    def __init__(self, full_scale: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.full_scale = full_scale
        self.feed: LiveFeed | None = None
        self.send_command: CommandSender | None = None  # set when the device server runs in this process
        self.run_job: Callable[[str, Coroutine[Any, Any, Any]], object] | None = None
        self.device: DeviceLive | None = None
        self.listen: ListenIn | None = None
        self._shown_version = -1
        self._scope_version = -1
        self._tasks: set[asyncio.Task[Any]] = set()

        self.title = QLabel("Select a device")
        self.meter = QProgressBar()
        self.meter.setRange(0, 100)
        self.meter.setFormat("level %v")
        self.direction = QComboBox()
        self.direction.addItem("uplink (its microphone)", "uplink")
        self.direction.addItem("downlink (what it is told)", "downlink")
        self.listen_button = QPushButton("Listen in")
        self.listen_button.setCheckable(True)
        self.listen_button.toggled.connect(self._listen_toggled)
        self.direction.currentIndexChanged.connect(lambda _i: self._restart_listening())
        self.listen_note = QLabel("Listen-in plays what the device hears or says, live.")
        self.listen_note.setWordWrap(True)
        self.listen_note.setStyleSheet("color: gray;")
        self.scope = Scope()
        self.alert_text = QLineEdit(placeholderText="alert text shown on the device")
        self.command_buttons: dict[str, QPushButton] = {}
        commands = QHBoxLayout()
        commands.addWidget(self.alert_text, 1)
        for command, text in (("alert", "Alert"), ("reboot", "Reboot"), ("goodbye", "Goodbye")):
            button = QPushButton(text)
            button.clicked.connect(lambda _c=False, cmd=command: self.command_clicked(cmd))
            commands.addWidget(button)
            self.command_buttons[command] = button
        self.transcript = QPlainTextEdit(readOnly=True)
        self.transcript.setMaximumBlockCount(500)

        listen_row = QHBoxLayout()
        listen_row.addWidget(self.direction, 1)
        listen_row.addWidget(self.listen_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.meter)
        layout.addLayout(listen_row)
        layout.addWidget(self.scope)
        layout.addWidget(self.listen_note)
        layout.addLayout(commands)
        layout.addWidget(self.transcript, 1)
        self._update_enabled()

    # ---- selection ----------------------------------------------------------------------------------

    def show_device(self, device: DeviceLive | None) -> None:
        if device is self.device:
            return
        same = device is not None and self.device is not None and device.device_id == self.device.device_id
        if self.listen_button.isChecked() and not same:
            self.listen_button.setChecked(False)  # listening follows a device, not the panel
        self.device = device
        self._shown_version = -1
        self.title.setText("Select a device" if device is None else f"<b>{device.device_id}</b> · {device.session_id}")
        if device is None:
            self.transcript.clear()
            self.meter.setValue(0)
        self._update_enabled()

    def _update_enabled(self) -> None:
        connected = self.device is not None and self.device.connected
        self.listen_button.setEnabled(connected or self.listen_button.isChecked())
        for button in self.command_buttons.values():
            button.setEnabled(connected and self.send_command is not None)

    # ---- the timer's redraw -------------------------------------------------------------------------

    def redraw(self) -> None:
        dev = self.device
        if dev is None:
            return
        self.meter.setValue(int(min(100, 100 * dev.last_level / self.full_scale)))
        if dev.transcript_version != self._shown_version:
            self._shown_version = dev.transcript_version
            self.transcript.setPlainText("\n".join(dev.transcript))
            bar = self.transcript.verticalScrollBar()
            bar.setValue(bar.maximum())
            self._update_enabled()
        listen = self.listen
        if listen is not None:
            if listen.scope_version != self._scope_version:
                self._scope_version = listen.scope_version
                pcm, _rate = listen.recent_pcm()
                self.scope.show_pcm(pcm)
            note = f"{listen.note} · {listen.frames_decoded} frames"
            if self.listen_note.text() != note:
                self.listen_note.setText(note)

    # ---- listen-in ----------------------------------------------------------------------------------

    def _listen_toggled(self, on: bool) -> None:
        self._stop_listening()
        if on and self.device is not None and self.feed is not None:
            direction: Direction = self.direction.currentData()
            self.listen = ListenIn(self.feed, self.device.device_id, direction)
            self.listen.start()
            self._scope_version = -1
            self.listen_note.setText(self.listen.note)
        elif not on:
            self.scope.show_pcm(None)
            self.listen_note.setText("Listen-in plays what the device hears or says, live.")
        self._update_enabled()

    def _restart_listening(self) -> None:
        if self.listen_button.isChecked():
            self._listen_toggled(True)

    def _stop_listening(self) -> None:
        listen, self.listen = self.listen, None
        if listen is not None:
            self._background("stop listening", listen.stop())

    async def close(self) -> None:
        listen, self.listen = self.listen, None
        if listen is not None:
            await listen.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- operator commands --------------------------------------------------------------------------

    def command_clicked(self, command: str) -> None:
        if self.device is None or self.send_command is None:
            return
        message = self.alert_text.text().strip() if command == "alert" else ""
        self._background(f"{command} {self.device.device_id}", self.send_command(self.device.device_id, command,
                                                                                  message))  # fmt: skip

    def _background(self, what: str, coro: Coroutine[Any, Any, Any]) -> None:
        if self.run_job is not None:
            self.run_job(what, coro)
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
