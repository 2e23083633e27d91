from __future__ import annotations

import asyncio
import io
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import soundfile

from server.audio.ogg_opus import read_ogg_opus_packets
from server.config import MinioSettings
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.errors import InvalidInput, NotFound, StorageError, StorageUnavailable
from server.storage.models import NewMessage
from tests.conftest import minio_settings
from tests.support.audio import encode_opus
from tests.support.proxy import FaultProxy

DEVICE = "aa:bb:cc:dd:ee:ff"
WHEN = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ten_seconds() -> list[bytes]:
    return encode_opus(16000, 60, 10.02)


async def test_upload_writes_playable_ogg_object_row_and_links_message(
    audio_store: AudioStore, store: ConversationStore, ten_seconds: list[bytes]
) -> None:
    await store.add_message(NewMessage("s1", DEVICE, "user", "你好", message_id="m1"))
    row = await audio_store.save_opus_packets(
        session_id="s1",
        device_id=DEVICE,
        source="user",
        packets=ten_seconds,
        sample_rate=16000,
        message_id="m1",
        created_at=WHEN,
        transcription="你好",
    )
    assert row.object_key.startswith("aa-bb-cc-dd-ee-ff/2026-12-03/s1/user-") and row.object_key.endswith(".opus")
    assert row.duration_ms == 10_020 and row.file_type == "opus" and row.sample_rate == 16000
    assert (await store.get_message("m1")).audio_file_id == row.file_id
    data = await audio_store.download(row.file_id)
    assert len(data) == row.file_size
    packets, rate, channels = read_ogg_opus_packets(data)
    assert packets == ten_seconds and rate == 16000 and channels == 1, "the device's own packets, not re-encoded"
    pcm, sr = soundfile.read(io.BytesIO(data))
    assert sr == 16000 and abs(len(pcm) / sr - 10.02) < 0.07


async def test_same_file_id_twice_stores_one_object_and_one_row(
    audio_store: AudioStore, store: ConversationStore, ten_seconds: list[bytes]
) -> None:
    kwargs = dict(
        session_id="s1",
        device_id=DEVICE,
        source="tts",
        packets=ten_seconds[:5],
        sample_rate=24000,
        file_id="fixed",
        created_at=WHEN,
    )
    first = await audio_store.save_opus_packets(**kwargs)  # type: ignore[arg-type]
    second = await audio_store.save_opus_packets(**kwargs)  # type: ignore[arg-type]
    assert first.object_key == second.object_key
    assert len(await store.list_audio_files(session_id="s1")) == 1
    assert await audio_store.list_objects(DEVICE) == [first.object_key]


async def test_presigned_url_plays_without_credentials_and_expiry_is_bounded(
    audio_store: AudioStore, ten_seconds: list[bytes]
) -> None:
    row = await audio_store.save_opus_packets(
        session_id="s1", device_id=DEVICE, source="user", packets=ten_seconds[:10], sample_rate=16000
    )
    url = await audio_store.presigned_url(row.file_id, timedelta(minutes=5))
    fetched = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert fetched == await audio_store.download(row.file_id)
    with pytest.raises(InvalidInput, match="expiry"):
        await audio_store.presigned_url(row.file_id, timedelta(days=8))


async def test_list_by_device_day_and_session(audio_store: AudioStore, ten_seconds: list[bytes]) -> None:
    day2 = WHEN + timedelta(days=1)
    for session, when in (("s1", WHEN), ("s2", WHEN), ("s3", day2)):
        await audio_store.save_opus_packets(
            session_id=session,
            device_id=DEVICE,
            source="user",
            packets=ten_seconds[:3],
            sample_rate=16000,
            created_at=when,
        )
    await audio_store.save_opus_packets(
        session_id="other",
        device_id="dev-2",
        source="user",
        packets=ten_seconds[:3],
        sample_rate=16000,
        created_at=WHEN,
    )
    assert len(await audio_store.list_objects(DEVICE)) == 3
    assert len(await audio_store.list_objects(DEVICE, day=WHEN.date())) == 2
    only = await audio_store.list_objects(DEVICE, day=WHEN.date(), session_id="s2")
    assert len(only) == 1 and "/s2/" in only[0]
    assert len(await audio_store.list_objects(DEVICE, session_id="s3")) == 1


async def test_delete_removes_object_and_row(
    audio_store: AudioStore, store: ConversationStore, ten_seconds: list[bytes]
) -> None:
    row = await audio_store.save_opus_packets(
        session_id="s1", device_id=DEVICE, source="user", packets=ten_seconds[:3], sample_rate=16000
    )
    await audio_store.delete(row.file_id)
    assert await audio_store.list_objects(DEVICE) == []
    with pytest.raises(NotFound):
        await store.get_audio_file(row.file_id)


async def test_lifecycle_rule_set_read_and_removed(audio_store: AudioStore) -> None:
    await audio_store.set_lifecycle(30)
    assert await audio_store.lifecycle_days() == 30
    await audio_store.set_lifecycle(0)
    assert await audio_store.lifecycle_days() is None


async def test_empty_oversize_and_invalid_audio_are_refused_and_nothing_is_left(
    s3_endpoint: str, store: ConversationStore, ten_seconds: list[bytes]
) -> None:
    settings = minio_settings(s3_endpoint).model_copy(update={"max_upload_bytes": 4096})
    audio = AudioStore(settings, store)
    await audio.start()
    try:
        common = dict(session_id="s1", device_id=DEVICE, source="user", sample_rate=16000)
        with pytest.raises(InvalidInput, match="empty audio"):
            await audio.save_opus_packets(packets=[], **common)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="at most 4096"):
            await audio.save_opus_packets(packets=ten_seconds, **common)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="invalid opus"):
            await audio.save_opus_packets(packets=[b""], **common)  # type: ignore[arg-type]
        assert await audio.list_objects(DEVICE) == []
    finally:
        audio.close()


async def test_wrong_keys_are_a_clear_error(s3_endpoint: str, store: ConversationStore) -> None:
    settings = MinioSettings(endpoint=s3_endpoint, access_key_id="nobody", secret_access_key="wrong-secret")
    audio = AudioStore(settings, store)
    try:
        with pytest.raises(StorageError, match="access refused"):
            await audio.start()
    finally:
        audio.close()


async def test_unreachable_s3_is_storage_unavailable(store: ConversationStore) -> None:
    proxy = await FaultProxy("127.0.0.1", 9).start()
    await proxy.cut()
    audio = AudioStore(minio_settings(f"127.0.0.1:{proxy.port}"), store)
    try:
        with pytest.raises(StorageUnavailable, match="unreachable"):
            await audio.start()
    finally:
        audio.close()
