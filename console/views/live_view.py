"""Live devices: the table, all devices' scrolling level waveforms and meters in one QPainter grid, and the
selected device's panel (meter, listen-in, operator commands, transcript).

The LiveFeed subscription is a bounded drop-oldest queue; ONE GUI timer drains it, folds the events into
LiveState and redraws: the grid rebuilds only the paths of devices with new levels and repaints once, the
table's text refreshes a few times a second (as Friture's text does), the device server's own view of its
connections (state, protocol, codec, counters) is read once a second. Network and audio code only enqueue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QAbstractItemView, QLabel, QSplitter, QTableView, QVBoxLayout, QWidget

from console.domain.live import LiveState
from console.models.live_device_model import LiveDeviceModel
from console.views.level_grid import MAX_TILES, LevelGrid
from console.views.live_device_panel import LiveDevicePanel
from server.live.feed import LiveEvent, LiveFeed, Subscription

FPS = 60
MAX_PLOTS = MAX_TILES
LEVEL_FULL_SCALE = 8000.0
TABLE_INTERVAL_S = 0.25
SUMMARY_INTERVAL_S = 1.0


class LiveView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = LiveState()
        self.model = LiveDeviceModel(self.state, self)
        self.subscription: Subscription | None = None
        self.on_connect: Callable[[LiveEvent], None] | None = None  # new session → the session list
        self.device_summaries: Callable[[], list[dict[str, Any]]] | None = None  # DeviceServer.devices, in process
        self.frames = 0
        self.frame_times: list[float] = []  # seconds per tick (the benchmark reads these)
        self._pending_rows: set[str] = set()
        self._table_at = 0.0
        self._summary_at = 0.0
        self._selected: str | None = None
        self._wanted: str | None = None  # asked to select before the feed announced it

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.grid = LevelGrid(self.state, LEVEL_FULL_SCALE)
        self.panel = LiveDevicePanel(LEVEL_FULL_SCALE)
        self.urls = QLabel("device server not started")
        self.urls.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.table)
        left.addWidget(self.grid)
        left.setSizes([260, 440])
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.panel)
        split.setSizes([800, 420])
        layout = QVBoxLayout(self)
        layout.addWidget(self.urls)
        layout.addWidget(split, 1)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _p: self._select(cur.row()))
        self.grid.device_clicked.connect(self.select_device)
        self.timer = QTimer(self, interval=1000 // FPS)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.tick)

    # the panel's widgets, by the names the rest of the console (and its tests) use
    @property
    def transcript(self) -> Any:
        return self.panel.transcript

    @property
    def meter(self) -> Any:
        return self.panel.meter

    def attach(self, feed: LiveFeed) -> None:
        self.detach()
        self.panel.feed = feed
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
            self._pending_rows |= changed
            if self.model.rowCount() < len(self.state.order):
                self._refresh_table()  # a new device shows at once; text updates are batched
                self.table.resizeColumnToContents(0)
            if self.on_connect is not None:
                for ev in connects:
                    self.on_connect(ev)
            if self._wanted is not None and self._wanted in self.state.devices:
                self.select_device(self._wanted)
        if self.device_summaries is not None and started - self._summary_at >= SUMMARY_INTERVAL_S:
            self._summary_at = started
            self._pending_rows |= self.state.apply_summaries(self.device_summaries())
        if self._pending_rows and started - self._table_at >= TABLE_INTERVAL_S:
            self._refresh_table()
        if self._selected is not None and self.panel.device is not self.state.devices.get(self._selected):
            self.panel.show_device(self.state.devices.get(self._selected))  # it reconnected: a new session
        self.grid.refresh()
        self.panel.redraw()
        self.frames += 1
        self.frame_times.append(time.perf_counter() - started)
        if len(self.frame_times) > 1000:
            del self.frame_times[:500]

    def _refresh_table(self) -> None:
        self.model.refresh(self._pending_rows)
        self._pending_rows = set()
        self._table_at = time.perf_counter()

    def _select(self, row: int) -> None:
        dev = self.model.device_at(row)
        self._selected = None if dev is None else dev.device_id
        self.grid.select(self._selected)
        self.panel.show_device(dev)

    def select_device(self, device_id: str) -> None:
        if device_id in self.state.order:
            self._wanted = None
            self.table.selectRow(self.state.order.index(device_id))
        else:
            self._wanted = device_id

    async def close(self) -> None:
        self.detach()
        await self.panel.close()
