"""The settings dialog (a temporary config dir, never the user's settings), the export progress dialog
cancelled halfway (the partial file goes), and the error banner against a real outage: PostgreSQL cut off
behind a real TCP proxy, then restored, and Retry loads again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox, QPushButton

from console.domain.connection import SavedConnection, SecretStore, connection_file, load_connection
from console.views.settings_dialog import SettingsDialog
from server.config import Settings
from tests.console.conftest import QLoop
from tests.console.seed import seed_sessions
from tests.support.proxy import FaultProxy


def test_settings_dialog_saves_to_the_test_config_dir_and_reloads(qtbot: Any, tmp_path: Path) -> None:
    config = Path(os.environ["XIAOZHI_CONSOLE_CONFIG_DIR"])
    assert config.is_relative_to(tmp_path), "never the user's real settings"
    secrets = SecretStore()
    assert secrets.file.parent == config, "no keyring in tests: secrets go to the 0600 file in the test dir"
    dialog = SettingsDialog(secrets=secrets)
    qtbot.addWidget(dialog)
    assert dialog.embedded.isChecked() and load_connection() is None, "fresh: embedded, nothing saved"
    dialog.embedded.setChecked(False)
    dialog.db_host.setText("db.internal")
    dialog.db_port.setValue(6543)
    qtbot.keyClicks(dialog.db_password, "s3cret-pw")
    dialog.s3_endpoint.setText("s3.internal:9000")
    dialog.s3_secret.setText("s3-secret")
    dialog.remote.setText("ws://a:8000/xiaozhi/live, ws://b:8000/xiaozhi/live")
    save = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Save)
    qtbot.mouseClick(save, Qt.MouseButton.LeftButton)
    assert dialog.result() == SettingsDialog.DialogCode.Accepted
    saved = load_connection()
    remotes = ["ws://a:8000/xiaozhi/live", "ws://b:8000/xiaozhi/live"]
    expected = SavedConnection(embedded=False, db_host="db.internal", db_port=6543, s3_endpoint="s3.internal:9000",
                               remote_live_urls=remotes)  # fmt: skip
    assert saved == expected
    assert "s3cret-pw" not in connection_file().read_text()
    assert secrets.file.stat().st_mode & 0o777 == 0o600 and secrets.get("database.password") == "s3cret-pw"

    again = SettingsDialog(secrets=SecretStore())
    qtbot.addWidget(again)
    assert not again.embedded.isChecked() and again.db_host.text() == "db.internal" and again.db_port.value() == 6543
    assert again.db_password.text() == "s3cret-pw" and again.s3_secret.text() == "s3-secret"
    again.db_host.setText("changed")
    cancel = again.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Cancel)
    qtbot.mouseClick(cancel, Qt.MouseButton.LeftButton)
    assert load_connection().db_host == "db.internal", "cancel saves nothing"


def test_export_cancelled_halfway_removes_the_partial_file(console: Any, qloop: QLoop, tmp_path: Path) -> None:
    qloop.run(seed_sessions(console.backend.store, 300), 60)
    qloop.run(console.window.sessions.reload())
    ops = next(e for e in console.extensions if type(e).__name__ == "Operations")
    target = tmp_path / "all.json"
    task = console.jobs.run("export", ops.export(target, "json"))
    qloop.until(lambda: ops.progress is not None and ops.progress.value() >= 5, 30)
    dialog = ops.progress
    assert dialog.maximum() == 300 and dialog.value() < 300, "cancelled in the middle of the run"
    assert (tmp_path / "all.json.part").exists(), "the export was writing"
    dialog.findChild(QPushButton).click()  # the dialog's Cancel button
    assert qloop.run(asyncio.wait_for(task, 30)) == 0
    assert not target.exists() and not (tmp_path / "all.json.part").exists()
    assert ops.progress is None and "export cancelled" in console.window.statusBar().currentMessage()


def test_error_banner_on_a_real_outage_then_retry(console_settings: Settings, qloop: QLoop, qtbot: Any) -> None:
    from console.app import ConsoleApp, ConsoleOptions

    db = console_settings.database
    proxy = qloop.run(FaultProxy(db.host, db.port).start())
    console_settings.database = db.model_copy(update={"host": "127.0.0.1", "port": proxy.port})
    app = ConsoleApp(console_settings, ConsoleOptions(serve_devices=False, demo_when_empty=False), qloop.loop)
    qtbot.addWidget(app.window)
    app.window.show()
    try:
        qloop.run(app.start(), 60)
        qloop.run(seed_sessions(app.backend.store, 3))
        banner = app.window.banner
        assert not banner.isVisible()
        qloop.run(proxy.cut())  # PostgreSQL "goes away": open connections reset, new ones refused
        app.window.refresh_action.trigger()
        qloop.until(banner.isVisible, 30)
        assert "load sessions failed" in banner.label.text() and banner.retry_button.isVisible()
        assert app.window.isEnabled(), "a banner, never a frozen window or a modal traceback"
        qloop.run(proxy.restore())
        qtbot.mouseClick(banner.retry_button, Qt.MouseButton.LeftButton)
        qloop.until(lambda: app.window.sessions.model.rowCount() == 3, 30)
        assert not banner.isVisible()
    finally:
        qloop.run(app.stop(), 60)
        qloop.run(proxy.close())
