"""Operations (export with progress and cancel, delete, retention preview, dashboard), secrets, the live
view, and the whole flow: a simulated device speaks → its session appears → open it → play its audio."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from console.domain import export as exporting
from console.domain.connection import SavedConnection, SecretStore, apply_connection, load_connection, save_connection
from console.domain.player import refresh_devices
from console.domain.session_query import SessionQuery
from server.config import Settings
from server.live.feed import LiveEvent
from tests.console.conftest import QLoop
from tests.console.seed import seed_rich_session, seed_sessions
from tests.support.sim import private_pulseaudio


def test_export_json_csv_zip_with_progress_and_cancel(console: Any, qloop: QLoop, tmp_path: Path) -> None:
    b = console.backend
    ids = qloop.run(seed_rich_session(b.store, b.audio))
    qloop.run(seed_sessions(b.store, 3))
    seen: list[tuple[int, int]] = []
    n = qloop.run(exporting.export(b.store, b.audio, SessionQuery(), tmp_path / "all.json", "json",
                                   lambda d, t: seen.append((d, t))))  # fmt: skip
    assert n == 4 and seen[-1] == (4, 4)
    doc = json.loads((tmp_path / "all.json").read_text())
    rich = next(s for s in doc["sessions"] if s["session_id"] == "rich-1")
    first = rich["messages"][0]
    assert first["message_id"] == ids["user"] and first["audio"]["object_key"].endswith(".opus")
    assert rich["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather", "lossless"
    n = qloop.run(exporting.export(b.store, b.audio, SessionQuery(text="北京"), tmp_path / "m.csv", "csv"))
    rows = list(csv.DictReader((tmp_path / "m.csv").open(encoding="utf-8")))
    assert n == 1 and len(rows) == 5 and rows[0]["content"] == "北京天气怎么样？" and rows[0]["audio_object_key"]
    qloop.run(exporting.export(b.store, b.audio, SessionQuery(), tmp_path / "a.zip", "zip"))
    assert len(zipfile.ZipFile(tmp_path / "a.zip").namelist()) == 2
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(exporting.ExportCancelled):
        qloop.run(exporting.export(b.store, b.audio, SessionQuery(), tmp_path / "c.json", "json", None, stop))
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "c.json.part").exists()


def test_delete_audio_then_session_is_confirmed_and_recorded(console: Any, qloop: QLoop) -> None:
    b = console.backend
    qloop.run(seed_rich_session(b.store, b.audio))
    qloop.run(console.window.sessions.reload())
    ops = next(e for e in console.extensions if type(e).__name__ == "Operations")
    ops.confirm = lambda _text: False
    assert qloop.run(ops.delete_audio("rich-1")) is False
    assert qloop.run(b.store.get_session("rich-1")).audio_count == 2, "not confirmed: nothing removed"
    ops.confirm = lambda _text: True
    assert qloop.run(ops.delete_audio("rich-1")) is True
    info = qloop.run(b.store.get_session("rich-1"))
    assert info.audio_count == 0 and info.metadata["audio_deleted"]["files"] == 2
    assert qloop.run(b.audio.list_objects("aa:bb:cc:00:00:09")) == []
    assert qloop.run(ops.delete_session("rich-1")) is True
    info = qloop.run(b.store.get_session("rich-1"))
    assert info.message_count == 0 and info.metadata["deleted"]["messages"] == 5
    assert qloop.run(b.store.timeline("rich-1")) == []
    row = console.window.sessions.model.row_of("rich-1")
    assert console.window.sessions.model.index(row, 4).data() == "deleted"


def test_retention_preview_and_dashboard(console: Any, qloop: QLoop) -> None:
    qloop.run(seed_sessions(console.backend.store, 4))  # March 2026: older than 30 days
    dash = next(e for e in console.extensions if type(e).__name__ == "DashboardWiring").view
    dash.days.setValue(30)
    lines = qloop.run(dash.preview())
    assert "would remove 8 messages" in lines
    assert qloop.run(console.backend.store.get_session("s-00000")).message_count == 2, "dry run removes nothing"
    d = qloop.run(dash.refresh())
    assert d.busiest == [] and "sessions" in dash.totals.text()


def test_secrets_go_to_a_0600_file_without_a_keyring_and_apply(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    assert store.where.endswith("secrets.json")
    conn = SavedConnection(embedded=False, db_host="db.example", db_port=6543, s3_endpoint="s3.example:9000",
                           s3_access_key="AK")  # fmt: skip
    save_connection(conn, {"database.password": "pw", "minio.secret_access_key": "sk"}, store)
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert "pw" not in (Path(os.environ["XIAOZHI_CONSOLE_CONFIG_DIR"]) / "connection.yaml").read_text()
    loaded = load_connection()
    assert loaded == conn
    settings = Settings()
    apply_connection(settings, loaded, store)
    assert settings.database.host == "db.example" and settings.database.password.get_secret_value() == "pw"
    assert settings.minio is not None and settings.minio.secret_access_key.get_secret_value() == "sk"


def test_live_view_drains_the_bounded_feed_on_its_timer(
    console: Any, qloop: QLoop, qtmodeltester: Any, qtbot: Any
) -> None:
    live = console.live
    feed = console.backend.live
    for i in range(3):
        feed.publish(LiveEvent("connect", f"dev-{i}", f"live-{i}"))
    feed.publish(LiveEvent("level", "dev-1", "live-1", {"rms": 4000.0, "speech": True}))
    feed.publish(LiveEvent("stt", "dev-1", "live-1", {"text": "你好"}))
    feed.publish(LiveEvent("tool_call", "dev-1", "live-1", {"name": "set_volume", "arguments": "{}"}))
    qloop.until(lambda: live.model.rowCount() == 3)
    qtmodeltester.check(live.model)
    live.select_device("dev-1")
    qloop.until(lambda: "你好" in live.transcript.toPlainText())
    assert live.model.index(1, 5).data() == "1" and live.model.index(1, 7).data() == "1"
    assert live.meter.value() == 50
    console.window.show_view("live")
    paints = live.grid.paints
    feed.publish(LiveEvent("level", "dev-2", "live-2", {"rms": 2000.0}))
    qloop.until(lambda: live.grid.paints > paints)  # new levels: the one grid repaints
    tile = live.grid._tile(2).center().toPoint()
    qtbot.mouseClick(live.grid, Qt.MouseButton.LeftButton, pos=tile)  # a tile selects its device
    qloop.until(lambda: live.panel.device is not None and live.panel.device.device_id == "dev-2")
    assert live.grid.selected == "dev-2"
    idle = live.grid.paints
    qloop.run(asyncio.sleep(0.3))
    assert live.grid.paints - idle <= 2, "nothing changed: no repaint on every tick"
    for _ in range(10_000):  # a burst far beyond the queue: the oldest are dropped, nothing blocks
        feed.publish(LiveEvent("level", "dev-2", "live-2", {"rms": 1.0}))
    qloop.until(lambda: live.subscription is not None and live.subscription.dropped > 0)
    frames = live.frames
    qloop.until(lambda: live.frames > frames + 5)


def test_whole_flow_device_speaks_session_appears_open_and_play(
    console_settings: Settings, qloop: QLoop, qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from console.app import ConsoleApp, ConsoleOptions
    from simulator.client import DeviceClient
    from simulator.identity import DeviceIdentity

    app = ConsoleApp(console_settings, ConsoleOptions(demo_when_empty=False), qloop.loop)
    qtbot.addWidget(app.window)
    app.window.show()
    try:
        qloop.run(app.start(), 60)
        qloop.until(lambda: app.backend.endpoints is not None, 60)
        assert "ws://" in app.live.urls.text()

        async def device_speaks() -> str:
            client = DeviceClient(app.backend.endpoints.websocket_url, DeviceIdentity.generate())
            await client.connect()
            try:
                await client.say("hello")
                return client.session_id
            finally:
                await client.close()

        session_id = qloop.run(device_speaks(), 90)
        sessions = app.window.sessions.model
        qloop.until(lambda: sessions.row_of(session_id) is not None, 30)
        assert session_id in [d.session_id for d in app.live.state.devices.values()]
        app.window.sessions.table.selectRow(sessions.row_of(session_id))
        conv = app.window.conversation
        qloop.until(lambda: conv.conversation is not None and conv.conversation.info.session_id == session_id)

        async def reply_audio() -> str:
            while True:
                conversation = await conv.open(session_id)
                spoken = [b for b in conversation.bubbles if b.audio is not None]
                if spoken:
                    return spoken[0].message.message_id
                await asyncio.sleep(0.2)

        message_id = qloop.run(reply_audio(), 30)
        with private_pulseaudio() as pulse:
            monkeypatch.setenv("PULSE_SERVER", pulse.server)
            monkeypatch.setenv("PULSE_SINK", pulse.sink)
            refresh_devices()
            assert qloop.run(conv.play_message(message_id)) is True, conv.audio_note.text()
            qloop.until(lambda: app.player.position_s > 0.2, 10)
            app.player.stop()
        monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent")
        refresh_devices()
    finally:
        qloop.run(app.stop(), 60)
