"""The session list: filters for every column, a date range, full-text search with highlighted hits,
and a lazily filled table (SessionListModel)."""

from __future__ import annotations

import html
from datetime import date

from PySide6.QtCore import QDate, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDateEdit,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from console.domain import formatting, links
from console.domain.backend import ConsoleBackend
from console.domain.jobs import Jobs
from console.domain.session_query import SessionPager, SessionQuery, search_hits
from console.models.session_list_model import SessionListModel
from server.storage.models import SearchHit

ANY_DATE = QDate(2000, 1, 1)


def highlight(text: str, spans: list[tuple[int, int]], limit: int = 160) -> str:
    """HTML for a hit with its matches marked; long text is cut around the first match."""
    start = max(0, spans[0][0] - 40) if spans else 0
    end = min(len(text), start + limit)
    out, pos = [], start
    for a, b in sorted(spans):
        if b <= pos or a >= end:
            continue
        a = max(a, pos)
        out.append(html.escape(text[pos:a]))
        out.append(f"<b style='background:#ffd54f;color:black'>{html.escape(text[a : min(b, end)])}</b>")
        pos = min(b, end)
    out.append(html.escape(text[pos:end]))
    return ("…" if start else "") + "".join(out) + ("…" if end < len(text) else "")


class TriState(QComboBox):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.addItems([f"{label}: any", f"{label}: yes", f"{label}: no"])

    def value(self) -> bool | None:
        return {0: None, 1: True, 2: False}[self.currentIndex()]


class SessionsView(QWidget):
    session_activated = Signal(str, str)  # session_id, message_id ("" for none)

    def __init__(self, backend: ConsoleBackend, jobs: Jobs, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.jobs = jobs
        self.model = SessionListModel(jobs, self)
        self.query = SessionQuery()
        self._quiet = False  # selecting a row from code (--open) must not re-open it

        self.search = QLineEdit(placeholderText="Search messages (中文 or English)…  Ctrl+F")
        self.search.setClearButtonEnabled(True)
        self.device = QLineEdit(placeholderText="device")
        self.agent = QLineEdit(placeholderText="agent")
        self.status = QComboBox()
        self.status.addItems(["status: any", "active", "ended", "reset", "migrated"])
        self.has_audio = TriState("audio")
        self.has_tools = TriState("tools")
        self.use_dates = QCheckBox("dates")
        self.since = QDateEdit(calendarPopup=True)
        self.until = QDateEdit(calendarPopup=True)
        for edit in (self.since, self.until):
            edit.setDisplayFormat("yyyy-MM-dd")
            edit.setDate(QDate.currentDate())
            edit.setEnabled(False)
        self.count_label = QLabel()

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for col, width in enumerate((150, 90, 140, 60, 60, 45, 45, 45)):
            self.table.setColumnWidth(col, width)
        self.hits = QTextBrowser()
        self.hits.setOpenLinks(False)
        self.hits.anchorClicked.connect(lambda url: self._open_link(url.toString()))
        self.hits.hide()

        filters = QHBoxLayout()
        for w in (self.device, self.agent, self.status, self.has_audio, self.has_tools, self.use_dates, self.since,
                  QLabel("–"), self.until):  # fmt: skip
            filters.addWidget(w)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.hits)
        split.setSizes([500, 160])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.search)
        layout.addLayout(filters)
        layout.addWidget(split, 1)
        layout.addWidget(self.count_label)

        # Typing waits for a pause; one query runs at a time (a newer one cancels the older).
        self._debounce = QTimer(self, singleShot=True, interval=250)
        self._debounce.timeout.connect(self.apply_filters)
        for edit in (self.search, self.device, self.agent):
            edit.textChanged.connect(lambda _t: self._debounce.start())
        for combo in (self.status, self.has_audio, self.has_tools):
            combo.currentIndexChanged.connect(lambda _i: self.apply_filters())
        self.use_dates.toggled.connect(self._dates_toggled)
        self.since.dateChanged.connect(lambda _d: self.apply_filters())
        self.until.dateChanged.connect(lambda _d: self.apply_filters())
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self.model.page_loaded.connect(lambda _n: self._update_count())

    # ---- filters ------------------------------------------------------------------------------------

    def _dates_toggled(self, on: bool) -> None:
        self.since.setEnabled(on)
        self.until.setEnabled(on)
        self.apply_filters()

    def current_query(self) -> SessionQuery:
        status = self.status.currentText() if self.status.currentIndex() > 0 else ""
        since: date | None = self.since.date().toPython() if self.use_dates.isChecked() else None  # type: ignore[assignment]
        until: date | None = self.until.date().toPython() if self.use_dates.isChecked() else None  # type: ignore[assignment]
        return SessionQuery(
            device=self.device.text(), agent=self.agent.text(), status=status, since=since, until=until,
            has_audio=self.has_audio.value(), has_tool_calls=self.has_tools.value(), text=self.search.text(),
        )  # fmt: skip

    def apply_filters(self) -> None:
        if not self.backend.started:
            return
        self.jobs.run("load sessions", self.reload(self.current_query()), replace=True)

    async def reload(self, query: SessionQuery | None = None) -> int:
        """Show the first page of ``query`` (and its message hits when it searches text)."""
        self.query = query if query is not None else self.query
        self.model.reset_with(SessionPager(self.backend.store, self.query))
        rows = await self.model.load_next_page()
        if self.query.text.strip():
            self.show_hits(await search_hits(self.backend.store, self.query))
        else:
            self.hits.hide()
        self._update_count()
        return rows

    def show_hits(self, hits: list[SearchHit]) -> None:
        parts = []
        for hit in hits:
            link = links.message_link(hit.session_id, hit.message_id)
            parts.append(
                f"<p><a href='{html.escape(link)}'>{formatting.local_time(hit.created_at)} · "
                f"{html.escape(hit.device_id)} · {hit.role}</a><br>{highlight(hit.content, hit.spans)}</p>"
            )
        self.hits.setHtml("".join(parts) or "<p>No messages match.</p>")
        self.hits.show()

    def _update_count(self) -> None:
        pager = self.model.pager
        more = "" if pager is None or pager.exhausted else "+ (scroll for more)"
        self.count_label.setText(f"{self.model.rowCount()}{more} sessions")

    # ---- navigation ---------------------------------------------------------------------------------

    def _open_link(self, link: str) -> None:
        target = links.parse_target(link)
        self.session_activated.emit(target.session_id, target.message_id or "")

    def _row_changed(self, current: object, _previous: object) -> None:
        if self._quiet:
            return
        session = self.model.session_at(current.row())  # type: ignore[attr-defined]
        if session is not None:
            self.session_activated.emit(session.session_id, "")

    def step(self, delta: int) -> None:
        """Next (+1) / previous (-1) session."""
        row = self.table.currentIndex().row()
        target = max(0, min(self.model.rowCount() - 1, row + delta if row >= 0 else 0))
        if self.model.rowCount():
            self.table.selectRow(target)

    def select_session(self, session_id: str) -> None:
        row = self.model.row_of(session_id)
        if row is not None:
            self._quiet = True
            try:
                self.table.selectRow(row)
            finally:
                self._quiet = False
