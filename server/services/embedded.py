"""Run the embedded PostgreSQL and S3 servers together under one base directory.

Layout::

    base_dir/
      postgres/            EmbeddedPostgres data dir
      s3/                  EmbeddedS3 data dir
        credentials.json   S3 access/secret key (0600), generated once
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from server.services.embedded_postgres import EmbeddedPostgres
from server.services.embedded_s3 import EmbeddedS3

APP_NAME = "xiaozhi-console"


def default_base_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "services"


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def load_or_create_s3_credentials(path: Path) -> S3Credentials:
    """Read the S3 keys from `path`, creating it (mode 0600) on first use.

    weed takes its identity from the environment on every start, so a lost or
    corrupt file only means new keys: no stored object depends on them.
    """
    existing = _read_credentials(path)
    if existing is not None:
        _restrict_mode(path)
        return existing
    credentials = S3Credentials(
        # S3 access keys are conventionally upper-case alphanumerics.
        access_key="XZ" + secrets.token_hex(9).upper(),
        secret_key=secrets.token_urlsafe(30),
    )
    _write_private_json(path, {"access_key": credentials.access_key, "secret_key": credentials.secret_key})
    return credentials


def _read_credentials(path: Path) -> S3Credentials | None:
    try:
        data = json.loads(path.read_text())
        credentials = S3Credentials(access_key=str(data["access_key"]), secret_key=str(data["secret_key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return credentials if credentials.access_key and credentials.secret_key else None


def _restrict_mode(path: Path) -> None:
    # Someone may have copied the file around with a lax umask.
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _write_private_json(path: Path, data: dict[str, str]) -> None:
    """Write JSON atomically, readable by the owner only from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
            handle.write("\n")
        os.chmod(tmp, 0o600)  # O_CREAT mode is filtered by umask and ignored if tmp existed
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class EmbeddedServices:
    """Own an EmbeddedPostgres and an EmbeddedS3; start what is asked, stop in reverse."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        postgres_port: int | None = None,
        s3_port: int | None = None,
    ) -> None:
        self.base_dir = Path(base_dir) if base_dir is not None else default_base_dir()
        self._postgres_port = postgres_port
        self._s3_port = s3_port
        self.postgres: EmbeddedPostgres | None = None
        self.s3: EmbeddedS3 | None = None
        self._started: list[EmbeddedPostgres | EmbeddedS3] = []

    @property
    def postgres_dir(self) -> Path:
        return self.base_dir / "postgres"

    @property
    def s3_dir(self) -> Path:
        return self.base_dir / "s3"

    @property
    def credentials_path(self) -> Path:
        return self.s3_dir / "credentials.json"

    @property
    def postgres_dsn(self) -> str | None:
        return self.postgres.dsn if self.postgres is not None and self.postgres in self._started else None

    @property
    def s3_endpoint(self) -> str | None:
        return self.s3.endpoint if self.s3 is not None and self.s3 in self._started else None

    def s3_credentials(self) -> S3Credentials:
        return load_or_create_s3_credentials(self.credentials_path)

    def start(self, postgres: bool = True, s3: bool = True) -> None:
        """Start the requested services (already running ones are left alone).

        If one fails, the ones this call started are stopped again before the
        ServiceStartError propagates, so nothing is left half-up.
        """
        started_now: list[EmbeddedPostgres | EmbeddedS3] = []
        try:
            if postgres:
                self._start_one(self._postgres(), started_now)
            if s3:
                self._start_one(self._s3(), started_now)
        except BaseException:
            for service in reversed(started_now):
                self._stop_quietly(service)
            raise

    def stop(self) -> None:
        """Stop everything started, in reverse start order; the first error is re-raised at the end."""
        first_error: BaseException | None = None
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
            except Exception as exc:  # keep stopping the others
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    async def astart(self, postgres: bool = True, s3: bool = True) -> None:
        await asyncio.to_thread(self.start, postgres, s3)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    # ----------------------------------------------------------- helpers
    def _postgres(self) -> EmbeddedPostgres:
        if self.postgres is None:
            self.postgres = EmbeddedPostgres(self.postgres_dir, port=self._postgres_port)
        return self.postgres

    def _s3(self) -> EmbeddedS3:
        if self.s3 is None:
            credentials = self.s3_credentials()
            self.s3 = EmbeddedS3(
                self.s3_dir,
                access_key=credentials.access_key,
                secret_key=credentials.secret_key,
                port=self._s3_port,
            )
        return self.s3

    def _start_one(
        self, service: EmbeddedPostgres | EmbeddedS3, started_now: list[EmbeddedPostgres | EmbeddedS3]
    ) -> None:
        if service in self._started:
            return
        service.start()
        self._started.append(service)
        started_now.append(service)

    def _stop_quietly(self, service: EmbeddedPostgres | EmbeddedS3) -> None:
        # Already failing: a second error while cleaning up would hide the first.
        with contextlib.suppress(Exception):
            service.stop()
        if service in self._started:
            self._started.remove(service)
