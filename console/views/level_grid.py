"""All live devices at a glance in ONE widget painted with QPainter: a tile per device with a scrolling level
waveform, a level meter and its state.

One tick costs little whatever the number of devices: tile backgrounds and titles sit in a cached pixmap
(redrawn when a state, the selection or the size changes); the waveforms of all tiles are ONE path built by
one vectorised call from the devices' normalised level rows, of which only changed devices are refreshed;
then a paint is one pixmap, one path and a meter rectangle per device. The widget repaints only when
something changed.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QMouseEvent, QPainter, QPainterPath, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from console.domain.live import HISTORY, LiveState

MAX_TILES = 16
COLUMNS = 4
TITLE_H = 16
METER_W = 8
PAD = 4

WAVE = QColor("#4f8fd6")
SPEECH = QColor("#43a047")
TILE = QColor("#1e2228")
METER_BG = QColor("#2c323a")
DIM = QColor("#8a9099")
SELECTED = QColor("#f0b400")


class LevelGrid(QWidget):
    device_clicked = Signal(str)

    def __init__(self, state: LiveState, full_scale: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.full_scale = full_scale
        self.selected: str | None = None
        self.paints = 0
        self._rows = np.zeros((MAX_TILES, HISTORY))  # normalised levels (0…1), oldest first, one row per tile
        self._drawn: dict[str, int] = {}  # level_pos per device its row was filled from
        self._path: QPainterPath | None = None
        self._background: QPixmap | None = None
        self._background_key: object = None
        self._pen = QPen(WAVE)
        self._pen.setCosmetic(True)
        self._font = QFont()
        self._font.setPointSize(8)
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    # ---- what changed ---------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Copy the levels of devices that got new ones; schedule one repaint if anything changed."""
        dirty = False
        for i, device_id in enumerate(self.state.order[:MAX_TILES]):
            dev = self.state.devices[device_id]
            if self._drawn.get(device_id) != dev.level_pos:
                self._drawn[device_id] = dev.level_pos
                np.clip(dev.recent_levels() / self.full_scale, 0.0, 1.0, out=self._rows[i])
                dirty = True
        if dirty or self._background_key != self._tiles_key():
            self._path = None
            self.update()
            return True
        return False

    def select(self, device_id: str | None) -> None:
        self.selected = device_id
        self.update()

    def _tiles_key(self) -> object:
        tiles = tuple((d, self.state.devices[d].state, self.state.devices[d].connected)
                      for d in self.state.order[:MAX_TILES])  # fmt: skip
        return (self.width(), self.height(), self.selected, tiles)

    # ---- geometry -------------------------------------------------------------------------------------

    def _count(self) -> int:
        return min(len(self.state.order), MAX_TILES)

    def _tile(self, i: int) -> QRectF:
        rows = max(1, -(-self._count() // COLUMNS))
        w, h = self.width() / COLUMNS, self.height() / rows
        return QRectF((i % COLUMNS) * w, (i // COLUMNS) * h, w, h).adjusted(2, 2, -2, -2)

    def _wave_rect(self, tile: QRectF) -> QRectF:
        return QRectF(tile.left() + PAD, tile.top() + TITLE_H, tile.width() - 3 * PAD - METER_W,
                      tile.height() - TITLE_H - PAD)  # fmt: skip

    def _build_path(self, n: int) -> QPainterPath:
        """Every tile's waveform in one path: a vertical stroke per level point, mirrored about the tile's middle."""
        waves = [self._wave_rect(self._tile(i)) for i in range(n)]
        left = np.array([w.left() for w in waves])[:, None]
        width = np.array([w.width() for w in waves])[:, None]
        mid = np.array([w.center().y() for w in waves])[:, None]
        half = np.array([w.height() / 2 for w in waves])[:, None]
        x = left + np.arange(HISTORY)[None, :] * (width / HISTORY)
        amp = self._rows[:n] * half
        xs = np.repeat(x.ravel(), 2)
        ys = np.empty(2 * n * HISTORY)
        ys[0::2], ys[1::2] = (mid - amp).ravel(), (mid + amp).ravel()
        return pg.arrayToQPath(xs, ys, connect="pairs")

    # ---- painting -------------------------------------------------------------------------------------

    def _paint_background(self) -> QPixmap:
        pixmap = QPixmap(self.size())
        pixmap.fill(self.palette().window().color())
        p = QPainter(pixmap)
        p.setFont(self._font)
        for i, device_id in enumerate(self.state.order[:MAX_TILES]):
            dev = self.state.devices[device_id]
            r = self._tile(i)
            p.fillRect(r, TILE)
            if device_id == self.selected:
                p.setPen(SELECTED)
                p.drawRect(r)
            p.setPen(QColor("white") if dev.connected else DIM)
            title = QRectF(r.left() + PAD, r.top(), r.width() - 2 * PAD, TITLE_H)
            p.drawText(title, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, device_id)
            p.drawText(title, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, dev.state)
            wave = self._wave_rect(r)
            p.fillRect(QRectF(wave.right() + PAD, wave.top(), METER_W, wave.height()), METER_BG)
        p.end()
        return pixmap

    def paintEvent(self, event: QPaintEvent) -> None:
        self.paints += 1
        key = self._tiles_key()
        if self._background is None or key != self._background_key:
            self._background, self._background_key = self._paint_background(), key
        n = self._count()
        if self._path is None and n:
            self._path = self._build_path(n)
        p = QPainter(self)
        p.drawPixmap(0, 0, self._background)
        for i, device_id in enumerate(self.state.order[:n]):
            dev = self.state.devices[device_id]
            wave = self._wave_rect(self._tile(i))
            level = min(1.0, dev.last_level / self.full_scale)
            h = wave.height() * level
            p.fillRect(QRectF(wave.right() + PAD, wave.bottom() - h, METER_W, h), SPEECH if dev.speech else WAVE)
        if self._path is not None:
            p.setPen(self._pen)
            p.drawPath(self._path)
        p.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        for i, device_id in enumerate(self.state.order[:MAX_TILES]):
            if self._tile(i).contains(pos):
                self.device_clicked.emit(device_id)
                return
