"""Device activation with ``server.require_activation``: the simulated device runs the firmware's OTA check and
/activate polls, an operator enters the code with the real ``xiaozhi devices activate`` command, real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.config import ConfigError, DatabaseSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.runtime import StorageRuntime
from simulator import DeviceClient, DeviceIdentity, SimulatorError, activate, check_ota, load_identity
from simulator.ota import firmware_headers
from tests.integration.test_cli import config_for, xiaozhi
from tests.support.proxy import FaultProxy


def settings_for(db: DatabaseSettings, tmp_path: Path, **server: object) -> Settings:
    return Settings(
        database=db, data_dir=tmp_path,
        server=ServerSettings(**{"host": "127.0.0.1", "port": 0, "http_port": 0, "require_activation": True,
                                 **server}),  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
async def server(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[DeviceServer]:
    settings = settings_for(db, tmp_path)
    async with StorageRuntime(settings) as rt:
        srv = DeviceServer(settings, runtime=rt)
        await srv.start()
        yield srv
        await srv.stop()


@pytest.fixture
def identity(tmp_path: Path) -> DeviceIdentity:
    return load_identity(tmp_path / "simulator")


async def test_an_unbound_device_gets_a_code_and_connects_once_an_operator_enters_it(
    server: DeviceServer, identity: DeviceIdentity, db: DatabaseSettings, tmp_path: Path
) -> None:
    first = await check_ota(server.ota_url(), identity)
    assert first.activation is not None
    code = first.activation.code
    assert code.isdigit() and len(code) == 6 and first.activation.challenge
    assert first.activation.timeout_ms and first.activation.timeout_ms > 0
    again = await check_ota(server.ota_url(), identity)
    assert again.activation is not None and again.activation.code == code, "the code a user was told stays valid"

    assert await activate(server.ota_url(), identity) == "pending"
    with pytest.raises(SimulatorError, match="401"):
        await DeviceClient(first.websocket_url, identity).connect()

    cfg = str(config_for(tmp_path, db))
    listed = await xiaozhi("-c", cfg, "devices", "list")
    assert listed.returncode == 0 and identity.device_id in listed.stdout and code in listed.stdout
    bound = await xiaozhi("-c", cfg, "devices", "activate", code)
    assert bound.returncode == 0 and f"activated {identity.device_id}" in bound.stdout, bound.stderr

    assert await activate(server.ota_url(), identity) == "activated"
    assert (await check_ota(server.ota_url(), identity)).activation is None
    client = DeviceClient(first.websocket_url, identity)
    await client.connect()
    report = await client.say("what time is it")
    assert report.sentences and report.clean
    await client.close()

    # The code was used up, and unbinding makes the device ask again.
    reused = await xiaozhi("-c", cfg, "devices", "activate", code)
    assert reused.returncode == 1 and "Traceback" not in reused.stderr
    assert reused.stderr.splitlines()[-1].startswith("error: no device is waiting with activation code")
    unbound = await xiaozhi("-c", cfg, "devices", "deactivate", identity.device_id)
    assert unbound.returncode == 0
    assert (await check_ota(server.ota_url(), identity)).activation is not None


async def test_bad_and_expired_codes(server: DeviceServer, identity: DeviceIdentity, db: DatabaseSettings,
                                     tmp_path: Path) -> None:  # fmt: skip
    cfg = str(config_for(tmp_path, db))
    for bad in ("12ab56", "123"):
        run = await xiaozhi("-c", cfg, "devices", "activate", bad)
        assert run.returncode == 1 and "6 digits" in run.stderr and "Traceback" not in run.stderr
    first = await check_ota(server.ota_url(), identity)
    assert first.activation is not None
    assert server.runtime is not None and server.runtime.pool is not None
    await server.runtime.pool.execute("UPDATE devices SET activation_expires_at = now() - interval '1 second'")
    expired = await xiaozhi("-c", cfg, "devices", "activate", first.activation.code)
    assert expired.returncode == 1 and "expired" in expired.stderr
    with pytest.raises(SimulatorError, match="404"):
        await activate(server.ota_url(), identity)  # no live code: the firmware re-runs its version check
    fresh = await check_ota(server.ota_url(), identity)
    assert fresh.activation is not None and fresh.activation.challenge != first.activation.challenge


async def test_without_the_option_every_device_is_welcome(db: DatabaseSettings, tmp_path: Path,
                                                          identity: DeviceIdentity) -> None:  # fmt: skip
    settings = settings_for(db, tmp_path, require_activation=False)
    async with StorageRuntime(settings) as rt:
        srv = DeviceServer(settings, runtime=rt)
        await srv.start()
        try:
            answer = await check_ota(srv.ota_url(), identity)
            assert answer.activation is None
            assert await activate(srv.ota_url(), identity) == "activated"
        finally:
            await srv.stop()


async def test_database_down_answers_503_and_the_device_retries(
    db: DatabaseSettings, tmp_path: Path, identity: DeviceIdentity
) -> None:
    proxy = await FaultProxy(db.host, db.port).start()
    settings = settings_for(db.model_copy(update={"port": proxy.port}), tmp_path)
    try:
        async with StorageRuntime(settings) as rt:
            srv = DeviceServer(settings, runtime=rt)
            await srv.start()
            try:
                await proxy.cut()
                headers = firmware_headers(identity)
                async with aiohttp.ClientSession() as http:
                    async with http.post(srv.ota_url(), json={}, headers=headers) as response:
                        assert response.status == 503
                    async with http.post(srv.ota_url() + "activate", json={}, headers=headers) as response:
                        assert response.status == 503
                with pytest.raises(SimulatorError, match="503"):
                    await DeviceClient(srv.websocket_url(), identity).connect()
                await proxy.restore()
                assert (await check_ota(srv.ota_url(), identity)).activation is not None
            finally:
                await srv.stop()
    finally:
        await proxy.close()


async def test_require_activation_without_a_database_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, server=ServerSettings(host="127.0.0.1", port=0, http_port=0,
                                                                 require_activation=True))  # fmt: skip
    with pytest.raises(ConfigError, match="require_activation needs the database"):
        await DeviceServer(settings).start()
