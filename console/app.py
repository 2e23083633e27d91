"""ConsoleApp: the root object. One asyncio loop (qasync) drives Qt and all I/O; storage starts after
the window is up, so the window is interactive at once and every load shows a busy indicator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from console.domain import links
from console.domain.backend import ConsoleBackend
from console.domain.jobs import Jobs, describe_error
from console.domain.paths import config_dir
from console.domain.player import AudioPlayer
from console.views.main_window import MainWindow
from server.config import Settings
from server.storage.models import SessionFilter

log = logging.getLogger(__name__)
VIEWS = ("sessions", "conversation", "live")


@dataclass
class ConsoleOptions:
    open_target: str | None = None
    screenshot: Path | None = None
    view: str = "sessions"
    serve_devices: bool = True
    demo_when_empty: bool = True  # a fresh embedded install gets one demo conversation to browse


class ConsoleApp:
    def __init__(
        self, settings: Settings, options: ConsoleOptions | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.options = options or ConsoleOptions()
        self.backend = ConsoleBackend(settings, serve_devices=self.options.serve_devices)
        self.jobs = Jobs(on_error=self._on_error, loop=loop)
        self.player = AudioPlayer()
        self.qsettings = QSettings(str(config_dir() / "console.ini"), QSettings.Format.IniFormat)
        self.window = MainWindow(self.backend, self.jobs, self.player, self.qsettings)
        self.window.restore_layout()
        self.extensions: list[object] = []
        self._build_extensions()
        self.ready = asyncio.Event()

    def _build_extensions(self) -> None:
        """The live view, simulator, operations and dashboard (each optional, each its own module)."""
        from console.views.extensions import install

        self.extensions = install(self)

    # ---- errors ---------------------------------------------------------------------------------------

    def _on_error(self, what: str, exc: BaseException) -> None:
        retry = self.start_clicked if not self.backend.started else self.window.sessions.apply_filters
        self.window.banner.show_error(f"{what} failed: {describe_error(exc)}", retry)

    # ---- start and stop -------------------------------------------------------------------------------

    def start_clicked(self) -> None:
        self.jobs.run("start storage", self.start())

    async def start(self) -> None:
        self.window.endpoints.setText("starting storage…")
        for line in await self.backend.start_storage():
            log.info("%s", line)
        self.window.banner.hide()
        self.window.endpoints.setText(" · ".join(self.backend.runtime.describe()[:2]) if self.backend.runtime else "")
        if self.options.demo_when_empty and self.backend.settings.database.embedded:
            await self._demo_if_empty()
        await self.window.sessions.reload()
        if self.options.open_target:
            target = links.parse_target(self.options.open_target)
            await self.window.open_session(target.session_id, target.message_id)
        for ext in self.extensions:
            on_storage = getattr(ext, "on_storage_ready", None)
            if on_storage is not None:
                on_storage()
        self.ready.set()
        if self.options.serve_devices:
            self.jobs.run("start the device server", self.start_devices())

    async def start_devices(self) -> None:
        endpoints = await self.backend.start_device_server()
        for line in endpoints.lines():
            print(line, flush=True)
        self.window.endpoints.setText(f"devices: {endpoints.websocket_url}  ·  OTA: {endpoints.ota_url}")
        for ext in self.extensions:
            on_devices = getattr(ext, "on_device_server", None)
            if on_devices is not None:
                on_devices()

    async def _demo_if_empty(self) -> None:
        page = await self.backend.store.list_sessions(SessionFilter(), limit=1)
        if not page.items and self.backend.runtime is not None and self.backend.runtime.bus is not None:
            from server.demo import store_demo_conversation

            for line in await store_demo_conversation(self.backend.runtime):
                log.info("%s", line)

    async def stop(self) -> None:
        self.player.stop()
        for ext in self.extensions:
            closing = getattr(ext, "close", None)
            if closing is not None:
                await closing()
        await self.jobs.cancel_all()
        await self.backend.stop()

    async def run_until_closed(self) -> int:
        closed = asyncio.Event()
        self.window.closed.connect(closed.set)
        self.window.show()
        self.jobs.run("start storage", self.start())
        try:
            await closed.wait()
        finally:
            await self.stop()
        return 0

    async def screenshot(self, path: Path, view: str) -> int:
        """Render ``view`` with its data loaded, save a PNG, exit."""
        self.window.show()
        await self.start()
        if view == "conversation":
            if self.window.conversation.conversation is None:
                first = self.window.sessions.model.session_at(0)
                if first is not None:
                    await self.window.open_session(first.session_id)
            track_job = self.jobs.named("load session audio")
            if track_job is not None:
                await asyncio.gather(track_job, return_exceptions=True)
            widget = self.window.conversation
        elif view == "live":
            device_job = self.jobs.named("start the device server")
            if device_job is not None:
                await asyncio.gather(device_job, return_exceptions=True)
            self.window.show_view("live")
            widget = self.window
        else:
            widget = self.window
        await asyncio.sleep(0.2)  # let layouts settle and timers paint once
        QApplication.processEvents()
        ok = widget.grab().save(str(path), "PNG")
        await self.stop()
        if not ok:
            print(f"error: cannot write {path}", file=sys.stderr)
            return 1
        print(f"saved {path}")
        return 0


def has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_gui(settings: Settings, options: ConsoleOptions) -> int:
    """Own the process's event loop: Qt's, with asyncio running inside it (qasync)."""
    import qasync

    if options.screenshot is not None and not has_display():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("xiaozhi-console")
    app.setOrganizationName("xiaozhi")
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    try:
        console = ConsoleApp(settings, options, loop)
        if options.screenshot is not None:
            return loop.run_until_complete(console.screenshot(options.screenshot, options.view))
        signal.signal(signal.SIGINT, lambda *_: console.window.close())
        signal.signal(signal.SIGTERM, lambda *_: console.window.close())
        return loop.run_until_complete(console.run_until_closed())
    finally:
        # qasync's default executor runs on QThreads: stop them while Qt is alive (else Qt aborts at exit)
        with contextlib.suppress(Exception):
            loop.close()
        asyncio.set_event_loop(None)
