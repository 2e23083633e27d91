"""The main window: sessions + conversation, live devices with the simulator panel, the dashboard;
toolbar operations, the error banner, a busy indicator, shortcuts, and the remembered layout."""

from __future__ import annotations

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QLabel, QMainWindow, QProgressBar, QSplitter, QTabWidget, QToolBar, QVBoxLayout, QWidget

from console.domain.backend import ConsoleBackend
from console.domain.jobs import Jobs
from console.domain.player import AudioPlayer
from console.views.banner import ErrorBanner
from console.views.conversation_view import ConversationView
from console.views.sessions_view import SessionsView


class MainWindow(QMainWindow):
    closed = Signal()

    def __init__(
        self, backend: ConsoleBackend, jobs: Jobs, player: AudioPlayer, qsettings: QSettings,
        parent: QWidget | None = None,
    ) -> None:  # fmt: skip
        super().__init__(parent)
        self.setWindowTitle("xiaozhi console")
        self.resize(1280, 800)
        self.backend = backend
        self.jobs = jobs
        self.qsettings = qsettings
        self.banner = ErrorBanner()
        self.sessions = SessionsView(backend, jobs)
        self.conversation = ConversationView(backend, jobs, player)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.addWidget(self.sessions)
        self.split.addWidget(self.conversation)
        self.split.setSizes([560, 720])
        self.tabs = QTabWidget()
        self.tabs.addTab(self.split, "Sessions")
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(120)
        self.busy.setMaximumHeight(14)
        self.busy.hide()
        self.endpoints = QLabel("starting storage…")
        self.endpoints.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.statusBar().addPermanentWidget(self.endpoints)
        self.statusBar().addPermanentWidget(self.busy)
        jobs.on_busy_changed = lambda n: self.busy.setVisible(n > 0)

        self.toolbar = QToolBar("Operations")
        self.toolbar.setObjectName("operations")
        self.addToolBar(self.toolbar)
        self.refresh_action = QAction("Refresh", self)
        self.refresh_action.setShortcut(QKeySequence.StandardKey.Refresh)
        self.refresh_action.triggered.connect(self.sessions.apply_filters)
        self.toolbar.addAction(self.refresh_action)

        self.sessions.session_activated.connect(self.open_session_clicked)
        self.conversation.status_message.connect(lambda text: self.statusBar().showMessage(text, 5000))
        QShortcut(QKeySequence.StandardKey.Find, self, activated=self._focus_search)
        QShortcut(QKeySequence("Alt+Down"), self, activated=lambda: self.sessions.step(1))
        QShortcut(QKeySequence("Alt+Up"), self, activated=lambda: self.sessions.step(-1))
        QShortcut(QKeySequence("Ctrl+P"), self, activated=self.conversation.toggle_play)
        QShortcut(QKeySequence(Qt.Key.Key_MediaTogglePlayPause), self, activated=self.conversation.toggle_play)

    def add_tab(self, widget: QWidget, title: str) -> None:
        self.tabs.addTab(widget, title)

    def show_view(self, name: str) -> None:
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i).lower().startswith(name.lower()[:4]):
                self.tabs.setCurrentIndex(i)

    def _focus_search(self) -> None:
        self.tabs.setCurrentIndex(0)
        self.sessions.search.setFocus()
        self.sessions.search.selectAll()

    def open_session_clicked(self, session_id: str, message_id: str) -> None:
        self.jobs.run("open session", self.open_session(session_id, message_id or None), replace=True)

    async def open_session(self, session_id: str, message_id: str | None = None) -> None:
        self.tabs.setCurrentIndex(0)
        self.sessions.select_session(session_id)
        await self.conversation.open(session_id, message_id)

    # ---- layout memory --------------------------------------------------------------------------------

    def restore_layout(self) -> None:
        geometry = self.qsettings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)  # type: ignore[arg-type]
        state = self.qsettings.value("window/state")
        if state is not None:
            self.restoreState(state)  # type: ignore[arg-type]
        split = self.qsettings.value("window/split")
        if split is not None:
            self.split.restoreState(split)  # type: ignore[arg-type]
        tab = self.qsettings.value("window/tab")
        if tab is not None:
            self.tabs.setCurrentIndex(int(tab))  # type: ignore[call-overload]

    def save_layout(self) -> None:
        self.qsettings.setValue("window/geometry", self.saveGeometry())
        self.qsettings.setValue("window/state", self.saveState())
        self.qsettings.setValue("window/split", self.split.saveState())
        self.qsettings.setValue("window/tab", self.tabs.currentIndex())
        self.qsettings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_layout()
        super().closeEvent(event)
        self.closed.emit()
