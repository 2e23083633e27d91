"""A session's waveform (pyqtgraph) with a playhead; dragging the playhead seeks."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget

from console.domain.audio import SessionTrack, peaks

BUCKETS = 2000


class WaveformView(pg.PlotWidget):
    seek_requested = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(70)
        self.setMaximumHeight(110)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideAxis("left")
        self.showGrid(x=True, y=False, alpha=0.2)
        self.setYRange(-1, 1)
        self._curve = self.plot(pen=pg.mkPen("#4f8fd6", width=1))
        self._regions: list[pg.LinearRegionItem] = []
        self.playhead = pg.InfiniteLine(pos=0, angle=90, movable=True, pen=pg.mkPen("#e53935", width=2))
        self.addItem(self.playhead)
        self.playhead.sigDragged.connect(lambda line: self.seek_requested.emit(float(line.value())))
        self.duration = 0.0

    def show_track(self, track: SessionTrack | None) -> None:
        for region in self._regions:
            self.removeItem(region)
        self._regions = []
        if track is None or len(track.clip.pcm) == 0:
            self._curve.setData([], [])
            self.duration = 0.0
            return
        lo, hi = peaks(track.clip.pcm, BUCKETS)
        self.duration = track.clip.seconds
        t = np.repeat(np.linspace(0, self.duration, len(lo)), 2)
        y = np.empty(2 * len(lo), np.float32)
        y[0::2], y[1::2] = lo, hi
        self._curve.setData(t, y)
        for seg in track.segments:
            region = pg.LinearRegionItem((seg.start_s, seg.end_s), movable=False, brush=pg.mkBrush(80, 140, 220, 30))
            region.setZValue(-10)
            self.addItem(region)
            self._regions.append(region)
        self.setXRange(0, self.duration, padding=0.01)

    def set_position(self, seconds: float) -> None:
        self.playhead.setValue(seconds)
