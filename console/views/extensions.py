"""Wires the parts of the window beyond sessions + conversation: live devices, operations, dashboard."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from console.views.dashboard_view import DashboardView
from console.views.live_view import LiveView
from console.views.operations import Operations
from console.views.simulator_panel import SimulatorPanel
from server.live.feed import LiveEvent

if TYPE_CHECKING:
    from console.app import ConsoleApp


class LiveWiring:
    """The live view follows the in-process device server's feed; a connect makes the new session
    appear in the session list and fills in the device's protocol and codec from the session row."""

    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.view = LiveView()
        app.window.add_tab(self.view, "Live devices")
        self.view.on_connect = self._connected
        self._new: dict[str, str] = {}  # session id → device id, connected but not yet in the session list
        self.view.panel.run_job = lambda what, coro: app.jobs.run(what, coro)
        self.view.attach(app.backend.live)

    def on_device_server(self) -> None:
        ep = self.app.backend.endpoints
        if ep is not None:
            self.view.urls.setText(f"Devices connect to {ep.websocket_url}  ·  OTA URL: {ep.ota_url}")
        server = self.app.backend.device_server
        if server is not None:
            self.view.device_summaries = server.devices  # type: ignore[attr-defined]
            self.view.panel.send_command = self.send_command

    async def send_command(self, device_id: str, command: str, message: str) -> None:
        server = self.app.backend.device_server
        if server is None:
            raise LookupError("the device server is not running in this console")
        await server.command(device_id, command, message)  # type: ignore[attr-defined]
        self.app.window.statusBar().showMessage(f"sent {command} to {device_id}", 5000)

    def _connected(self, event: LiveEvent) -> None:
        """Many devices connecting at once share ONE job that looks for their sessions (not a poll each)."""
        self._new[event.session_id] = event.device_id
        if self.app.backend.started and self.app.jobs.named("new sessions") is None:
            self.app.jobs.run("new sessions", self._find_new_sessions())

    async def _find_new_sessions(self) -> None:
        store = self.app.backend.store
        model = self.app.window.sessions.model
        for _ in range(30):  # the session row is written by the event bus, a moment after the connect event
            if not self._new:
                return
            await model.load_newer()
            for session_id, device_id in list(self._new.items()):
                if model.row_of(session_id) is None:
                    continue
                del self._new[session_id]
                info = await store.get_session(session_id)
                dev = self.view.state.devices.get(device_id)
                if dev is not None and dev.session_id == session_id and dev.protocol_version is None:
                    dev.set_session_metadata(info.metadata)
                    self.view.model.refresh({device_id})
            await asyncio.sleep(0.1)
        self._new.clear()  # not stored (a server without a database): the live view still shows the device

    async def close(self) -> None:
        await self.view.close()


class SimulatorWiring:
    """The simulator panel: a simulated device talking to this console's own device server."""

    def __init__(self, app: ConsoleApp, live: LiveWiring) -> None:
        self.app = app
        self.view = SimulatorPanel(lambda what, coro: app.jobs.run(what, coro))
        self.view.server_url = lambda: app.backend.endpoints.websocket_url if app.backend.endpoints else None
        self.view.on_started = lambda device: live.view.select_device(device.device_id)
        app.window.add_tab(self.view, "Simulator")

    def on_device_server(self) -> None:
        self.view.update_enabled()

    async def close(self) -> None:
        await self.view.close()


class DashboardWiring:
    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.view = DashboardView(app.backend, app.jobs)
        app.window.add_tab(self.view, "Dashboard")

    def on_storage_ready(self) -> None:
        self.app.jobs.run("dashboard", self.view.refresh())


def install(app: ConsoleApp) -> list[object]:
    live = LiveWiring(app)
    app.live = live.view  # type: ignore[attr-defined]
    simulator = SimulatorWiring(app, live)
    app.simulator = simulator.view  # type: ignore[attr-defined]
    return [simulator, live, Operations(app), DashboardWiring(app)]
