"""The selected device's waveform while listening in: the last seconds of decoded PCM as min/max columns,
painted with QPainter from one cached path (rebuilt only when new audio arrived)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen, QTransform
from PySide6.QtWidgets import QWidget

from console.domain.audio import peaks

COLUMNS = 400


class Scope(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(60)
        self.setMaximumHeight(90)
        self._path: QPainterPath | None = None
        self._pen = QPen(QColor("#43a047"))
        self._pen.setCosmetic(True)
        self.peak = 0  # the loudest sample shown (tests read it: real audio is not silence)

    def show_pcm(self, pcm: np.ndarray | None) -> None:
        if pcm is None or not len(pcm):
            self._path, self.peak = None, 0
        else:
            lo, hi = peaks(pcm, COLUMNS)
            n = len(lo)
            xs = np.repeat(np.arange(n, dtype=np.float64), 2)
            ys = np.empty(2 * n)
            ys[0::2], ys[1::2] = hi, lo
            self._path = pg.arrayToQPath(xs, ys, connect="pairs")
            self.peak = int(np.abs(pcm.astype(np.int32)).max())
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1e2228"))
        if self._path is not None:
            t = QTransform()
            t.translate(0, self.height() / 2)
            t.scale(self.width() / COLUMNS, -self.height() / 2)
            p.setTransform(t)
            p.setPen(self._pen)
            p.drawPath(self._path)
        p.end()
