from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DatabaseSettings, EventSettings, Settings
from server.events.types import AddMessage, SaveAudio
from server.runtime import StorageRuntime
from server.storage.errors import StorageUnavailable
from server.storage.models import NewMessage
from tests.conftest import minio_settings
from tests.support.audio import encode_opus
from tests.support.proxy import FaultProxy
from tests.support.waiting import wait_until

FAST_EVENTS = EventSettings(retries=1, retry_backoff_s=0.01, replay_interval_s=0.05)


async def test_s3_down_at_start_still_runs_and_audio_arrives_when_it_returns(
    db: DatabaseSettings, s3_endpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = s3_endpoint.split(":")
    proxy = await FaultProxy(host, int(port)).start()
    await proxy.cut()
    settings = Settings(
        database=db, minio=minio_settings(f"127.0.0.1:{proxy.port}"), data_dir=tmp_path, events=FAST_EVENTS
    )
    runtime = StorageRuntime(settings)
    await runtime.start()
    try:
        assert "audio store not ready" in caplog.text
        assert runtime.bus is not None and runtime.store is not None
        runtime.bus.publish(AddMessage(NewMessage("s", "dev", "user", "hi", message_id="m")))
        runtime.bus.publish(SaveAudio("s", "dev", "user", tuple(encode_opus(16000, 60, 0.6)), 16000, message_id="m"))
        await runtime.bus.drain()
        assert len(runtime.bus.spool) == 1
        await proxy.restore()
        await wait_until(lambda: not len(runtime.bus.spool))  # type: ignore[union-attr]
        assert (await runtime.store.get_message("m")).audio_file_id is not None
    finally:
        await runtime.stop()
        await proxy.close()


async def test_postgres_unreachable_at_start_is_one_clear_error(tmp_path: Path) -> None:
    proxy = await FaultProxy("127.0.0.1", 9).start()
    await proxy.cut()
    runtime = StorageRuntime(Settings(database=DatabaseSettings(port=proxy.port), data_dir=tmp_path))
    with pytest.raises(
        StorageUnavailable, match=rf"PostgreSQL xiaozhi@localhost:{proxy.port}/xiaozhi_admin is unreachable"
    ):
        await runtime.start()
    assert runtime.pool is None and runtime.bus is None


async def test_without_minio_section_audio_is_off_and_said_so(
    db: DatabaseSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    async with StorageRuntime(Settings(database=db, data_dir=tmp_path)) as runtime:
        assert runtime.audio is None
        assert "audio store not started (no minio section in the config): audio saving is off" in caplog.text
        assert "audio saving off" in runtime.describe()
