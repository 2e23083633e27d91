"""Wires the parts of the window beyond sessions + conversation: live devices, operations, dashboard."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from console.views.dashboard_view import DashboardView
from console.views.live_view import LiveView
from console.views.operations import Operations
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
        self.view.attach(app.backend.live)

    def on_device_server(self) -> None:
        ep = self.app.backend.endpoints
        if ep is not None:
            self.view.urls.setText(f"Devices connect to {ep.websocket_url}  ·  OTA URL: {ep.ota_url}")

    def _connected(self, event: LiveEvent) -> None:
        if self.app.backend.started:
            self.app.jobs.run("new sessions", self._after_connect(event))

    async def _after_connect(self, event: LiveEvent) -> None:
        store = self.app.backend.store
        for _ in range(20):  # the session row is written by the event bus, a moment after the connect event
            await self.app.window.sessions.model.load_newer()
            if self.app.window.sessions.model.row_of(event.session_id) is not None:
                break
            await asyncio.sleep(0.1)
        info = await store.get_session(event.session_id)
        dev = self.view.state.devices.get(event.device_id)
        if dev is not None:
            dev.set_session_metadata(info.metadata)
            self.view.model.refresh({event.device_id})

    async def close(self) -> None:
        self.view.detach()


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
    return [live, Operations(app), DashboardWiring(app)]
