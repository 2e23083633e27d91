"""Audio in S3/MinIO with its ``audio_files`` row (S11–S15).

Uploads are standard Ogg Opus files wrapped around the device's own opus packets (no re-encoding),
so any player can open them. Each upload writes the object, then the row, then links the message;
if the row cannot be written for a reason that will not go away, the object is removed again so
nothing is left that no row points at. The minio SDK is blocking: calls run on a small dedicated
thread pool so the event loop never waits on S3.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from server.audio.ogg_opus import build_ogg_opus
from server.audio.opus_packets import InvalidOpusPacket
from server.config import MinioSettings
from server.storage.conversation_store import ConversationStore, NewAudioFile
from server.storage.db import is_transient
from server.storage.errors import InvalidInput, NotFound, StorageError, StorageUnavailable
from server.storage.keys import CONTENT_TYPES, audio_object_key, device_prefix, safe_segment
from server.storage.models import AudioFile

log = logging.getLogger(__name__)
T = TypeVar("T")

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
LIFECYCLE_RULE_ID = "xiaozhi-audio-retention"


def _http_client() -> urllib3.PoolManager:
    # Fail fast when S3 is down: the event bus retries and spools, so long SDK retries only add latency.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=30.0),
        maxsize=16,
        retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
    )


class AudioStore:
    def __init__(self, settings: MinioSettings, store: ConversationStore, *, workers: int = 8) -> None:
        self.settings = settings
        self.bucket = settings.bucket_audio
        self.store = store
        self.client = Minio(
            settings.endpoint,
            access_key=settings.access_key_id,
            secret_key=settings.secret_access_key.get_secret_value(),
            secure=settings.use_ssl,
            region=settings.region,
            http_client=_http_client(),
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3")
        self._ready = False  # bucket checked; when S3 was down at start, the first upload checks again

    def describe(self) -> str:
        scheme = "https" if self.settings.use_ssl else "http"
        return f"S3 {scheme}://{self.settings.endpoint}/{self.bucket}"

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except S3Error as exc:
            if exc.code in _AUTH_CODES:
                raise StorageError(f"{self.describe()}: access refused ({exc.code}); check the access keys") from None
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"{self.describe()}: {exc.code} {getattr(exc, '_resource', '') or ''}".strip()) from None
            raise StorageError(f"{self.describe()}: {exc.code}: {exc.message}") from None
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailable(f"{self.describe()} is unreachable: {type(exc).__name__}: {exc}") from None

    async def start(self) -> None:
        """Create the bucket when missing (S11); raise with the endpoint when S3 cannot be used."""
        if not await self._call(self.client.bucket_exists, self.bucket):
            try:
                await self._call(self.client.make_bucket, self.bucket, self.settings.region)
            except StorageError as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc):
                    raise
            log.info("created bucket %s", self.bucket)
        self._ready = True
        log.info("audio store ready: %s", self.describe())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    # ---- writing --------------------------------------------------------------------------------

    async def save_opus_packets(
        self,
        *,
        session_id: str,
        device_id: str,
        source: str,
        packets: Sequence[bytes],
        sample_rate: int,
        channels: int = 1,
        message_id: str | None = None,
        file_id: str | None = None,
        created_at: datetime | None = None,
        transcription: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AudioFile:
        """Wrap the device's opus packets in Ogg and store object + row. Same file_id → same object and row."""
        if not packets:
            raise InvalidInput("empty audio: no opus packets to save")
        try:
            ogg = build_ogg_opus(packets, input_sample_rate=sample_rate, channels=channels)
        except InvalidOpusPacket as exc:
            raise InvalidInput(f"invalid opus audio: {exc}") from None
        return await self.save_file(
            session_id=session_id,
            device_id=device_id,
            source=source,
            data=ogg.data,
            file_type="opus",
            duration_ms=ogg.duration_ms,
            sample_rate=sample_rate,
            channels=channels,
            message_id=message_id,
            file_id=file_id,
            created_at=created_at,
            transcription=transcription,
            metadata={"packets": ogg.packet_count, **(metadata or {})},
        )

    async def save_file(
        self,
        *,
        session_id: str,
        device_id: str,
        source: str,
        data: bytes,
        file_type: str,
        duration_ms: int,
        sample_rate: int,
        channels: int = 1,
        message_id: str | None = None,
        file_id: str | None = None,
        created_at: datetime | None = None,
        transcription: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AudioFile:
        if not data:
            raise InvalidInput("empty audio: 0 bytes")
        if len(data) > self.settings.max_upload_bytes:
            raise InvalidInput(
                f"audio is {len(data)} bytes; at most {self.settings.max_upload_bytes} are allowed "
                "(minio.max_upload_bytes)"
            )
        if not self._ready:
            await self.start()
        created = created_at or datetime.now(UTC)
        key = audio_object_key(device_id, session_id, source, created, file_type)
        fid = file_id or uuid.uuid4().hex
        user_meta = {"device-id": safe_segment(device_id), "session-id": safe_segment(session_id), "source": source}
        if message_id:
            user_meta["message-id"] = safe_segment(message_id)
        await self._call(
            self.client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=CONTENT_TYPES[file_type],
            metadata=user_meta,
        )
        row = NewAudioFile(
            file_id=fid,
            session_id=session_id,
            device_id=device_id,
            bucket_name=self.bucket,
            object_key=key,
            file_type=file_type,
            file_size=len(data),
            duration_ms=duration_ms,
            sample_rate=sample_rate,
            channels=channels,
            source_type=source,
            message_id=message_id,
            transcription=transcription,
            metadata=metadata,
        )
        try:
            return await self.store.add_audio_file(row)
        except Exception as exc:
            if not is_transient(exc):
                # The row will never be written: do not leave an object that nothing points at.
                await self._call(self.client.remove_object, self.bucket, key)
            raise

    # ---- reading --------------------------------------------------------------------------------

    async def download(self, file_id: str) -> bytes:
        row = await self.store.get_audio_file(file_id)
        return await self.get_object(row.bucket_name, row.object_key)

    async def get_object(self, bucket: str, key: str) -> bytes:
        def fetch() -> bytes:
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(fetch)

    async def presigned_url(self, file_id: str, expiry: timedelta | None = None) -> str:
        """A GET URL any player can open without credentials, valid for ``expiry`` (default from config)."""
        row = await self.store.get_audio_file(file_id)
        expires = expiry or timedelta(seconds=self.settings.presign_expiry_s)
        if not timedelta(seconds=1) <= expires <= timedelta(days=7):
            raise InvalidInput("presigned URL expiry must be between 1 second and 7 days")
        return await self._call(self.client.presigned_get_object, row.bucket_name, row.object_key, expires=expires)

    async def list_objects(
        self, device_id: str, *, day: date | None = None, session_id: str | None = None
    ) -> list[str]:
        """Object keys under a device, optionally one UTC day and one session (S13)."""
        if session_id is not None and day is None:
            rows = await self.store.list_audio_files(session_id=session_id, device_id=device_id)
            return [r.object_key for r in rows]
        prefix = device_prefix(device_id)
        if day is not None:
            prefix += f"{day:%Y-%m-%d}/"
            if session_id is not None:
                prefix += safe_segment(session_id, kind="session_id") + "/"

        def names() -> list[str]:
            return [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]

        return await self._call(names)

    # ---- deleting -------------------------------------------------------------------------------

    async def delete(self, file_id: str) -> None:
        """Remove the object, then its row (a row never points at a missing object it could have kept)."""
        row = await self.store.get_audio_file(file_id)
        await self._call(self.client.remove_object, row.bucket_name, row.object_key)
        await self.store.delete_audio_file_row(file_id)

    async def remove_objects(self, keys: Sequence[str]) -> list[str]:
        """Bulk delete; returns the keys that could NOT be removed."""
        if not keys:
            return []

        def remove() -> list[str]:
            errors = self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys))
            return [e.name for e in errors]

        return await self._call(remove)

    async def set_lifecycle(self, days: int) -> None:
        """Expire audio objects after ``days`` (S27) as a backstop to the retention job; 0 removes the rule."""
        if days <= 0:
            await self._call(self.client.delete_bucket_lifecycle, self.bucket)
            return
        config = LifecycleConfig(
            [Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=LIFECYCLE_RULE_ID, expiration=Expiration(days=days))]
        )
        await self._call(self.client.set_bucket_lifecycle, self.bucket, config)

    async def lifecycle_days(self) -> int | None:
        config = await self._call(self.client.get_bucket_lifecycle, self.bucket)
        for rule in config.rules if config else []:
            if rule.rule_id == LIFECYCLE_RULE_ID and rule.expiration is not None:
                return rule.expiration.days
        return None
