"""The connection the settings dialog saves: an existing PostgreSQL, S3/MinIO and remote live feeds
instead of the embedded ones. Secrets go to the OS keyring where one exists, else to a 0600 file."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from console.domain.paths import config_dir
from server.config import DatabaseSettings, MinioSettings, Settings

log = logging.getLogger(__name__)
SERVICE = "xiaozhi-console"
SECRET_NAMES = ("database.password", "minio.secret_access_key", "remote.live_token")


@dataclass
class SavedConnection:
    embedded: bool = True
    db_host: str = "localhost"
    db_port: int = 5432
    db_user: str = "xiaozhi"
    db_name: str = "xiaozhi_admin"
    db_ssl_mode: str = "disable"
    s3_endpoint: str = ""  # empty: no audio storage
    s3_access_key: str = ""
    s3_bucket: str = "xiaozhi-audio"
    s3_use_ssl: bool = False
    s3_region: str = "us-east-1"
    remote_live_urls: list[str] = field(default_factory=list)  # ws://host:8000/xiaozhi/live


class SecretStore:
    """The OS keyring when a real one is available; otherwise ``secrets.json`` with mode 0600."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or config_dir()
        self._keyring = _usable_keyring()

    @property
    def where(self) -> str:
        return f"the OS keyring ({type(self._keyring).__name__})" if self._keyring else str(self.file)

    @property
    def file(self) -> Path:
        return self.directory / "secrets.json"

    def get(self, name: str) -> str:
        if self._keyring is not None:
            return self._keyring.get_password(SERVICE, name) or ""
        return str(self._read().get(name, ""))

    def set(self, name: str, value: str) -> None:
        if self._keyring is not None:
            self._keyring.set_password(SERVICE, name, value)
            return
        data = self._read()
        data[name] = value
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.file)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}


def _usable_keyring() -> Any:
    try:
        import keyring
        from keyring.backends import fail, null

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring | null.Keyring) or getattr(backend, "priority", 0) <= 0:
            return None
        chainer = getattr(backend, "backends", None)
        if chainer is not None and not chainer:
            return None
        return backend
    except Exception as exc:  # no D-Bus, locked keyring …: fall back to the file
        log.info("no usable keyring (%s); secrets go to a 0600 file", exc)
        return None


def connection_file() -> Path:
    return config_dir() / "connection.yaml"


def load_connection() -> SavedConnection | None:
    try:
        raw = yaml.safe_load(connection_file().read_text()) or {}
    except OSError:
        return None
    known = SavedConnection.__dataclass_fields__
    return SavedConnection(**{k: v for k, v in raw.items() if k in known})


def save_connection(conn: SavedConnection, secrets: dict[str, str], store: SecretStore | None = None) -> None:
    connection_file().write_text(yaml.safe_dump(asdict(conn), sort_keys=False))
    store = store or SecretStore()
    for name, value in secrets.items():
        if name not in SECRET_NAMES:
            raise KeyError(name)
        store.set(name, value)


def apply_connection(settings: Settings, conn: SavedConnection, store: SecretStore | None = None) -> None:
    """Point ``settings`` at the saved servers (embedded: leave the embedded defaults alone)."""
    if conn.embedded:
        return
    store = store or SecretStore()
    settings.database = DatabaseSettings(
        host=conn.db_host, port=conn.db_port, username=conn.db_user, database=conn.db_name,
        ssl_mode=conn.db_ssl_mode, password=SecretStr(store.get("database.password")), embedded=False,  # type: ignore[arg-type]
        pool=settings.database.pool,
    )  # fmt: skip
    if conn.s3_endpoint:
        settings.minio = MinioSettings(
            endpoint=conn.s3_endpoint, access_key_id=conn.s3_access_key, bucket_audio=conn.s3_bucket,
            secret_access_key=SecretStr(store.get("minio.secret_access_key")), use_ssl=conn.s3_use_ssl,
            region=conn.s3_region, embedded=False,
        )  # fmt: skip
    else:
        settings.minio = None


def apply_saved_connection(settings: Settings, *, explicit_config: bool) -> SavedConnection | None:
    """At start: the saved connection applies unless a config file was named on the command line."""
    conn = load_connection()
    if conn is not None and not explicit_config and settings.source.startswith("defaults"):
        apply_connection(settings, conn)
    return conn
