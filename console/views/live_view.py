"""Live devices: the table, a scrolling level waveform per device (one pyqtgraph grid), the selected
device's level meter, transcript and events. The LiveFeed subscription is a bounded drop-oldest queue;
ONE GUI timer drains it, folds the events into LiveState and redraws (setData once per curve per tick).
Network and audio code only ever enqueue."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.domain.live import HISTORY, LiveState
from console.models.live_device_model import LiveDeviceModel
from server.live.feed import LiveEvent, LiveFeed, Subscription

FPS = 60
MAX_PLOTS = 16
LEVEL_FULL_SCALE = 8000.0


class LiveView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = LiveState()
        self.model = LiveDeviceModel(self.state, self)
        self.subscription: Subscription | None = None
        self.on_connect: Callable[[LiveEvent], None] | None = None  # new session → the session list
        self.frames = 0
        self.frame_times: list[float] = []  # seconds per tick (the benchmark reads these)

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.grid = pg.GraphicsLayoutWidget()
        self._plots: dict[str, tuple[pg.PlotItem, pg.PlotDataItem]] = {}
        self._x = np.arange(HISTORY, dtype=np.float32)
        self.meter = QProgressBar()
        self.meter.setRange(0, 100)
        self.meter.setFormat("level %v")
        self.selected_label = QLabel("Select a device")
        self.transcript = QPlainTextEdit(readOnly=True)
        self.transcript.setMaximumBlockCount(500)
        self.listen_note = QLabel(
            "Listen-in: the device server publishes levels and text on its live feed, not audio; "
            "open the finished session to play what was said."
        )
        self.listen_note.setWordWrap(True)
        self.listen_note.setStyleSheet("color: gray;")
        self.urls = QLabel("device server not started")
        self.urls.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._selected: str | None = None
        self._shown_version = -1
        self._drawn: dict[str, int] = {}  # level_pos last drawn per device: unchanged curves are not redrawn

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.selected_label)
        side_layout.addWidget(self.meter)
        side_layout.addWidget(self.transcript, 1)
        side_layout.addWidget(self.listen_note)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.table)
        top.addWidget(side)
        top.setSizes([700, 400])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.grid)
        split.setSizes([300, 400])
        layout = QVBoxLayout(self)
        layout.addWidget(self.urls)
        layout.addWidget(split, 1)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _p: self._select(cur.row()))
        self.timer = QTimer(self, interval=1000 // FPS)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.tick)

    def attach(self, feed: LiveFeed) -> None:
        self.detach()
        self.subscription = feed.subscribe(maxsize=4096)
        self.timer.start()

    def detach(self) -> None:
        self.timer.stop()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    def tick(self) -> None:
        started = time.perf_counter()
        events = self.subscription.drain() if self.subscription is not None else []
        if events:
            changed, connects = self.state.apply(events)
            self.model.refresh(changed)
            if self.on_connect is not None:
                for ev in connects:
                    self.on_connect(ev)
        self._redraw()
        self.frames += 1
        self.frame_times.append(time.perf_counter() - started)
        if len(self.frame_times) > 1000:
            del self.frame_times[:500]

    def _redraw(self) -> None:
        for device_id in self.state.order[:MAX_PLOTS]:
            dev = self.state.devices[device_id]
            if device_id not in self._plots:
                n = len(self._plots)
                plot = self.grid.addPlot(row=n // 4, col=n % 4, title=device_id)
                plot.setYRange(0, LEVEL_FULL_SCALE)
                plot.hideAxis("bottom")
                plot.hideAxis("left")
                plot.setMouseEnabled(x=False, y=False)
                curve = plot.plot(pen=pg.mkPen("#4f8fd6"))
                curve.setClipToView(True)
                self._plots[device_id] = (plot, curve)
            if self._drawn.get(device_id) != dev.level_pos:
                self._drawn[device_id] = dev.level_pos
                self._plots[device_id][1].setData(self._x, dev.recent_levels())
        if self._selected is not None and self._selected in self.state.devices:
            dev = self.state.devices[self._selected]
            self.meter.setValue(int(min(100, 100 * dev.last_level / LEVEL_FULL_SCALE)))
            if dev.transcript_version != self._shown_version:
                self.transcript.setPlainText("\n".join(dev.transcript))
                self.transcript.verticalScrollBar().setValue(self.transcript.verticalScrollBar().maximum())
                self._shown_version = dev.transcript_version

    def _select(self, row: int) -> None:
        dev = self.model.device_at(row)
        self._selected = None if dev is None else dev.device_id
        self._shown_version = -1
        if dev is not None:
            self.selected_label.setText(f"<b>{dev.device_id}</b> · session {dev.session_id}")

    def select_device(self, device_id: str) -> None:
        if device_id in self.state.order:
            self.table.selectRow(self.state.order.index(device_id))
