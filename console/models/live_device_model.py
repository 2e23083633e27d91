"""LiveDeviceModel: one row per device seen on the live feed (rows keep their place)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from console.domain.live import DeviceLive, LiveState

Index = QModelIndex | QPersistentModelIndex
COLUMNS = ("Device", "State", "Protocol", "Codec", "Level", "STT", "TTS", "Tools", "Errors", "Frames in", "Frames out",
           "Session")  # fmt: skip


class LiveDeviceModel(QAbstractTableModel):
    def __init__(self, state: LiveState, parent: Any = None) -> None:
        super().__init__(parent)
        self.state = state
        self._rows = 0

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self._rows

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.DisplayRole
            and 0 <= section < len(COLUMNS)
        ):
            return COLUMNS[section]
        return None

    def device_at(self, row: int) -> DeviceLive | None:
        if 0 <= row < self._rows:
            return self.state.devices[self.state.order[row]]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        dev = self.device_at(index.row()) if index.isValid() else None
        if dev is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            c = dev.counters
            values = (dev.device_id, dev.state, "" if dev.protocol_version is None else f"v{dev.protocol_version}",
                      dev.codec, f"{dev.last_level:.0f}", c["stt"], c["tts"], c["tool_calls"], c["errors"],
                      c["frames_in"], c["frames_out"], dev.session_id)  # fmt: skip
            value = values[index.column()] if 0 <= index.column() < len(values) else None
            return None if value is None else str(value)
        if role == Qt.ItemDataRole.ForegroundRole and not dev.connected:
            return Qt.GlobalColor.gray
        return None

    def refresh(self, changed: set[str]) -> None:
        """Append rows for new devices, then repaint the changed ones."""
        total = len(self.state.order)
        if total > self._rows:
            self.beginInsertRows(QModelIndex(), self._rows, total - 1)
            self._rows = total
            self.endInsertRows()
        for row, device_id in enumerate(self.state.order):
            if device_id in changed:
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
