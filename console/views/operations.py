"""Toolbar operations: export (progress + cancel), delete a session or its audio (confirmed), settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QFileDialog, QMessageBox, QProgressDialog

from console.domain import export as exporting
from console.domain import operations

if TYPE_CHECKING:
    from console.app import ConsoleApp

Confirm = Callable[[str], bool]


class Operations:
    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.confirm: Confirm = self._ask
        w = app.window
        for text, slot in (
            ("Export…", self._export_dialog),
            ("Delete session…", self._delete_session_clicked),
            ("Delete audio…", self._delete_audio_clicked),
            ("Settings…", self._settings_dialog),
        ):
            w.toolbar.addAction(text).triggered.connect(slot)  # fmt: skip
        self.progress: QProgressDialog | None = None

    def _ask(self, text: str) -> bool:
        answer = QMessageBox.question(self.app.window, "Please confirm", text)
        return answer == QMessageBox.StandardButton.Yes

    # ---- export -------------------------------------------------------------------------------------

    def _export_dialog(self) -> None:
        path, _kind = QFileDialog.getSaveFileName(
            self.app.window, "Export the current filter", "sessions.json",
            "JSON, lossless (*.json);;CSV, one row per message (*.csv);;Audio zip (*.zip)",
        )  # fmt: skip
        if path:
            fmt = "csv" if path.endswith(".csv") else "zip" if path.endswith(".zip") else "json"
            self.app.jobs.run("export", self.export(Path(path), fmt))  # type: ignore[arg-type]

    async def export(self, path: Path, fmt: exporting.Format) -> int:
        cancelled = asyncio.Event()
        dialog = QProgressDialog(f"Exporting to {path.name}…", "Cancel", 0, 0, self.app.window)
        dialog.setMinimumDuration(300)
        dialog.canceled.connect(cancelled.set)
        self.progress = dialog

        def progress(done: int, total: int) -> None:
            dialog.setMaximum(total)
            dialog.setValue(done)

        try:
            query = self.app.window.sessions.current_query()
            backend = self.app.backend
            n = await exporting.export(backend.store, backend.audio, query, path, fmt, progress, cancelled)
        except exporting.ExportCancelled:
            self.app.window.statusBar().showMessage("export cancelled", 5000)
            return 0
        finally:
            dialog.reset()
            dialog.close()
            self.progress = None
        self.app.window.statusBar().showMessage(f"exported {n} sessions to {path}", 8000)
        return n

    # ---- delete -------------------------------------------------------------------------------------

    def _current_session(self) -> str | None:
        conv = self.app.window.conversation.conversation
        return None if conv is None else conv.info.session_id

    def _delete_session_clicked(self) -> None:
        sid = self._current_session()
        if sid:
            self.app.jobs.run("delete session", self.delete_session(sid))

    def _delete_audio_clicked(self) -> None:
        sid = self._current_session()
        if sid:
            self.app.jobs.run("delete audio", self.delete_audio(sid))

    async def delete_session(self, session_id: str) -> bool:
        if not self.confirm(f"Delete all messages and recordings of session {session_id}? This cannot be undone."):
            return False
        await operations.delete_session(self.app.backend.store, self.app.backend.audio, session_id)
        await self._refresh(session_id)
        return True

    async def delete_audio(self, session_id: str) -> bool:
        if not self.confirm(f"Delete the recordings of session {session_id}? The text stays."):
            return False
        await operations.delete_audio(self.app.backend.store, self.app.backend.audio, session_id)
        await self._refresh(session_id)
        return True

    async def _refresh(self, session_id: str) -> None:
        info = await self.app.backend.store.get_session(session_id)
        self.app.window.sessions.model.update_session(info)
        await self.app.window.conversation.open(session_id)

    # ---- settings -----------------------------------------------------------------------------------

    def _settings_dialog(self) -> None:
        from console.views.settings_dialog import SettingsDialog

        SettingsDialog(self.app.window).exec()
