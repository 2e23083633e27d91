"""SessionListModel: the session table, filled lazily a keyset page at a time (canFetchMore/fetchMore),
so 100,000+ sessions cost only the pages the user scrolls to. Pages load as asyncio tasks on the GUI
loop; the model never blocks."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal

from console.domain import formatting
from console.domain.jobs import Jobs
from console.domain.session_query import SessionPager
from server.storage.models import SessionInfo

Index = QModelIndex | QPersistentModelIndex
COLUMNS = ("Device", "Agent", "Started", "Duration", "Status", "Msgs", "Audio", "Tools")
SESSION_ID_ROLE = Qt.ItemDataRole.UserRole + 1


class SessionListModel(QAbstractTableModel):
    loading_changed = Signal(bool)
    page_loaded = Signal(int)  # rows added

    def __init__(self, jobs: Jobs, parent: Any = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self._rows: list[SessionInfo] = []
        self._ids: set[int] = set()
        self._pager: SessionPager | None = None
        self._loading = False
        self._generation = 0

    # ---- Qt model API ---------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

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

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        s = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(s, col)
        if role == SESSION_ID_ROLE:
            return s.session_id
        if role == Qt.ItemDataRole.ToolTipRole:
            deleted = " (deleted)" if s.metadata.get("deleted") else ""
            return f"session {s.session_id}{deleted}\ndevice {s.device_id}"
        if role == Qt.ItemDataRole.TextAlignmentRole and col >= 5:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _display(s: SessionInfo, col: int) -> str:
        match col:
            case 0:
                return s.device_id
            case 1:
                return s.agent_id or ""
            case 2:
                return formatting.local_time(s.started_at)
            case 3:
                return formatting.duration(s.duration)
            case 4:
                return "deleted" if s.metadata.get("deleted") else s.status
            case 5:
                return str(s.message_count)
            case 6:
                return "♪" if s.has_audio else ""
            case 7:
                return "⚙" if s.has_tool_calls else ""
        return ""

    def canFetchMore(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self._pager is not None and not self._pager.exhausted and not self._loading

    def fetchMore(self, parent: Index = QModelIndex()) -> None:  # noqa: B008
        if self.canFetchMore(parent):
            self._jobs.run("load sessions", self.load_next_page())

    # ---- loading ----------------------------------------------------------------------------------

    @property
    def loading(self) -> bool:
        return self._loading

    @property
    def pager(self) -> SessionPager | None:
        return self._pager

    def reset_with(self, pager: SessionPager | None) -> None:
        """Start over with a new query; pages of the previous query still in flight are ignored."""
        self._generation += 1
        self.beginResetModel()
        self._rows, self._ids, self._pager = [], set(), pager
        self._set_loading(False)
        self.endResetModel()

    async def load_next_page(self) -> int:
        pager, generation = self._pager, self._generation
        if pager is None or pager.exhausted or self._loading:
            return 0
        self._set_loading(True)
        try:
            items = await pager.next_page()
        finally:
            if generation == self._generation:
                self._set_loading(False)
        if generation != self._generation:
            return 0
        fresh = [s for s in items if s.id not in self._ids]
        if fresh:
            self.beginInsertRows(QModelIndex(), len(self._rows), len(self._rows) + len(fresh) - 1)
            self._rows.extend(fresh)
            self._ids.update(s.id for s in fresh)
            self.endInsertRows()
        self.page_loaded.emit(len(fresh))
        return len(fresh)

    async def load_newer(self) -> int:
        """Put sessions that started since the newest row at the top (new sessions appear live)."""
        pager, generation = self._pager, self._generation
        if pager is None:
            return 0
        newer = await pager.newer_than(self._rows[0] if self._rows else None)
        if generation != self._generation:
            return 0
        fresh = [s for s in newer if s.id not in self._ids]
        if fresh:
            self.beginInsertRows(QModelIndex(), 0, len(fresh) - 1)
            self._rows[0:0] = fresh
            self._ids.update(s.id for s in fresh)
            self.endInsertRows()
        return len(fresh)

    def update_session(self, info: SessionInfo) -> None:
        """A row changed (counts grew, deleted); refresh it in place."""
        for n, s in enumerate(self._rows):
            if s.id == info.id:
                self._rows[n] = info
                self.dataChanged.emit(self.index(n, 0), self.index(n, len(COLUMNS) - 1))
                return

    def _set_loading(self, value: bool) -> None:
        if value != self._loading:
            self._loading = value
            self.loading_changed.emit(value)

    # ---- lookups ----------------------------------------------------------------------------------

    def session_at(self, row: int) -> SessionInfo | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, session_id: str) -> int | None:
        for n, s in enumerate(self._rows):
            if s.session_id == session_id:
                return n
        return None
