"""Console tests: real PostgreSQL (per-test database) and S3 (SeaweedFS), a qasync loop beside qtbot,
and nothing of the user's: console settings, keyring and sound server all point at test-only places."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import qasync
from PySide6.QtCore import QCoreApplication, QEventLoop
from PySide6.QtWidgets import QApplication

import console.views  # guards None/True/False against the PySide6 6.12 refcount bug first
from server.config import DatabaseSettings, EventSettings, ServerSettings, Settings
from tests.conftest import minio_settings
from tests.support.sim import NO_SOUND

T = TypeVar("T")
# The QApplication is created once per run (pytest-qt's session fixture), before any function fixture:
# the platform must be chosen at import. Tests never open real windows.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _console_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XIAOZHI_CONSOLE_CONFIG_DIR", str(tmp_path / "console-config"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("PULSE_SERVER", NO_SOUND)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")


@dataclass
class QLoop:
    """Runs coroutines on a qasync loop (Qt events are processed meanwhile), with timeouts."""

    loop: qasync.QEventLoop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Drive Qt's event dispatcher (which runs qasync's callbacks) until ``coro`` is done."""
        future = asyncio.ensure_future(asyncio.wait_for(coro, timeout), loop=self.loop)
        dispatcher = QCoreApplication.eventDispatcher()
        flags = QEventLoop.ProcessEventsFlag.AllEvents | QEventLoop.ProcessEventsFlag.WaitForMoreEvents
        while not future.done():
            dispatcher.processEvents(flags)
        return future.result()

    def until(self, condition: Callable[[], object], timeout: float = 20.0) -> None:
        async def wait() -> None:
            while not condition():  # noqa: ASYNC110 - GUI state, nothing to await
                await asyncio.sleep(0.02)

        try:
            self.run(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout} s") from None


@pytest.fixture
def qloop(qapp: QApplication) -> Iterator[QLoop]:
    loop = qasync.QEventLoop(qapp)
    # In the app the qasync loop runs all the time, so callbacks that Qt dispatches (qtbot clicks, model
    # tester probes) always find a running loop; the tests keep it marked as running for the whole test.
    asyncio.events._set_running_loop(loop)
    try:
        yield QLoop(loop)
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        runner = QLoop(loop)
        if pending:
            runner.run(asyncio.gather(*pending, return_exceptions=True))
        runner.run(loop.shutdown_default_executor())
        asyncio.events._set_running_loop(None)
        loop.close()


@pytest.fixture
def console_settings(db: DatabaseSettings, s3_endpoint: str, tmp_path: Path) -> Settings:
    return Settings(
        database=db,
        minio=minio_settings(s3_endpoint),
        data_dir=tmp_path / "data",
        events=EventSettings(replay_interval_s=0.05),
        server=ServerSettings(host="127.0.0.1", port=0, http_port=0, speech_workers=0),
    )


@pytest.fixture
def console(console_settings: Settings, qloop: QLoop, qtbot: Any) -> Iterator[Any]:
    """A started ConsoleApp on the test database and bucket (no device server, no demo data)."""
    from console.app import ConsoleApp, ConsoleOptions

    app = ConsoleApp(console_settings, ConsoleOptions(serve_devices=False, demo_when_empty=False), qloop.loop)
    qtbot.addWidget(app.window)
    app.window.show()
    qloop.run(app.start(), 60)
    try:
        yield app
    finally:
        qloop.run(app.stop(), 60)


@pytest.fixture
def served_console(console_settings: Settings, qloop: QLoop, qtbot: Any) -> Iterator[Any]:
    """A started ConsoleApp that also runs the device server in process (as `xiaozhi console` does)."""
    from console.app import ConsoleApp, ConsoleOptions

    app = ConsoleApp(console_settings, ConsoleOptions(demo_when_empty=False), qloop.loop)
    qtbot.addWidget(app.window)
    app.window.show()
    try:
        qloop.run(app.start(), 60)
        qloop.until(lambda: app.backend.endpoints is not None, 60)
        yield app
    finally:
        qloop.run(app.stop(), 60)
