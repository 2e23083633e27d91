"""The ``xiaozhi`` command, run as a real process against real PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from server.config import DatabaseSettings
from server.storage import schema
from server.storage.conversation_store import ConversationStore
from server.storage.db import connect
from server.storage.models import NewMessage
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.support.device import ScriptedDevice

REPO = Path(__file__).resolve().parents[2]


def config_for(tmp_path: Path, db: DatabaseSettings, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"database: {{host: {db.host}, port: {db.port}, username: {db.username}, password: '', "
        f"database: {db.database}, pool: {{min_idle: 1}}}}\n"
        f"data_dir: {tmp_path / 'data'}\n{extra}",
        encoding="utf-8",
    )
    return path


async def xiaozhi(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "MINIO_", "XIAOZHI_CONFIG"))}
    env["PYTHONPATH"] = str(REPO)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_db_status_and_upgrade_on_a_fresh_database(tmp_path: Path, fresh_db: DatabaseSettings) -> None:
    cfg = str(config_for(tmp_path, fresh_db))
    before = await xiaozhi("-c", cfg, "db", "status")
    assert before.returncode == 3 and "PENDING (run: xiaozhi db upgrade)" in before.stdout
    up = await xiaozhi("-c", cfg, "db", "upgrade")
    assert up.returncode == 0 and "applied 0001_init" in up.stdout and "applied 0002_device_activation" in up.stdout
    again = await xiaozhi("-c", cfg, "db", "upgrade")
    assert again.returncode == 0 and "already up to date" in again.stdout
    after = await xiaozhi("-c", cfg, "db", "status")
    assert after.returncode == 0 and "schema version 2 of 2" in after.stdout


async def test_db_status_names_what_a_cut_off_bulk_load_dropped_and_upgrade_builds_it(
    tmp_path: Path, db: DatabaseSettings
) -> None:
    conn = await connect(db)
    try:
        dropped = await schema.drop_deferrable(conn, "conversation_messages")  # a migration cut off mid-load
    finally:
        await conn.close()
    cfg = str(config_for(tmp_path, db))
    status = await xiaozhi("-c", cfg, "db", "status")
    assert status.returncode == 3
    for name in dropped:
        assert f"{name}  MISSING: a bulk load was cut off (run: xiaozhi db upgrade)" in status.stdout
    up = await xiaozhi("-c", cfg, "db", "upgrade")
    assert up.returncode == 0 and "built conversation_messages_content_trgm_idx" in up.stdout
    after = await xiaozhi("-c", cfg, "db", "status")
    assert after.returncode == 0 and "MISSING" not in after.stdout


async def test_retention_dry_run_then_run_and_sessions_listing(
    tmp_path: Path, db: DatabaseSettings, store: ConversationStore, s3_endpoint: str
) -> None:
    old = datetime.now(UTC) - timedelta(days=200)
    await store.start_session("old-session", "dev-1", started_at=old)
    await store.add_message(NewMessage("old-session", "dev-1", "user", "很久以前", created_at=old))
    await store.end_session("old-session", ended_at=old + timedelta(minutes=1))
    await store.add_message(NewMessage("new-session", "dev-1", "user", "hello again"))
    minio = (
        f"minio: {{endpoint: '{s3_endpoint}', access_key_id: {S3_ACCESS_KEY}, "
        f"secret_access_key: {S3_SECRET_KEY}, bucket_audio: cli-retention}}\n"
    )
    cfg = str(config_for(tmp_path, db, minio))

    listing = await xiaozhi("-c", cfg, "sessions", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.index("new-session") < listing.stdout.index("old-session")
    found = await xiaozhi("-c", cfg, "sessions", "list", "--search", "以前")
    assert "old-session" in found.stdout and "new-session" not in found.stdout

    dry = await xiaozhi("-c", cfg, "retention", "run", "--dry-run", "--days", "90")
    assert dry.returncode == 0, dry.stderr
    assert "DRY RUN" in dry.stdout and "would remove 1 messages" in dry.stdout
    assert "would remove 1 sessions" in dry.stdout
    assert await store.pool.fetchval("SELECT count(*) FROM conversation_messages") == 2

    real = await xiaozhi("-c", cfg, "retention", "run", "--days", "90")
    assert real.returncode == 0 and "removed 1 messages" in real.stdout and "removed 1 sessions" in real.stdout
    shown = await xiaozhi("-c", cfg, "sessions", "show", "new-session")
    assert "hello again" in shown.stdout


async def test_unreachable_postgres_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("database: {host: 127.0.0.1, port: 1, password: x}\n", encoding="utf-8")
    result = await xiaozhi("-c", str(cfg), "db", "status")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: PostgreSQL xiaozhi@127.0.0.1:1/xiaozhi_admin")
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr
    assert "x" not in result.stderr.split("error:")[1].split("unreachable")[0].replace("xiaozhi", "")


async def test_schema_not_upgraded_tells_what_to_run(tmp_path: Path, fresh_db: DatabaseSettings) -> None:
    result = await xiaozhi("-c", str(config_for(tmp_path, fresh_db)), "sessions", "list")
    assert result.returncode == 1 and "run 'xiaozhi db upgrade'" in result.stderr


async def test_bad_config_and_bad_flags_exit_2_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("database: {port: nope}\n", encoding="utf-8")
    result = await xiaozhi("-c", str(cfg), "db", "status")
    assert result.returncode == 2 and "database.port" in result.stderr and "Traceback" not in result.stderr
    flag = await xiaozhi("retention", "run", "--days", "-3")
    assert flag.returncode == 2 and "must be 0 or more" in flag.stderr


async def test_config_command_hides_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("database: {password: hunter2}\nminio: {secret_access_key: topsecret}\n", encoding="utf-8")
    result = await xiaozhi("-c", str(cfg), "config")
    assert result.returncode == 0 and "**********" in result.stdout
    assert "hunter2" not in result.stdout and "topsecret" not in result.stdout


async def test_demo_runs_on_embedded_services_with_zero_configuration(tmp_path: Path) -> None:
    """What `make run` does on a fresh machine: embedded PostgreSQL + S3, a stored conversation with audio."""
    env_dir = tmp_path / "home"
    env_dir.mkdir()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server.cli.main", "demo", "--exit"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env_dir,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "MINIO_", "XIAOZHI_"))},
            "PYTHONPATH": str(REPO),
            "XIAOZHI_DATA_DIR": str(tmp_path / "data"),
        },
    )
    assert result.returncode == 0, result.stderr
    assert "8 messages, 4 audio files, status ended" in result.stdout
    assert "play the first recording" in result.stdout and ".opus?" in result.stdout


async def test_make_run_serves_devices_and_sigterm_stops_everything_cleanly(tmp_path: Path) -> None:
    """`make run`: a device talks to it at the printed URL; SIGTERM drains the bus, stops both embedded servers."""
    data = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli.main",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "MINIO_", "XIAOZHI_"))},
            "PYTHONPATH": str(REPO),
            "XIAOZHI_DATA_DIR": str(data),
        },
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(90):
            printed = []
            while b"press Ctrl+C to stop" not in (line := await proc.stdout.readline()):
                assert line, "demo exited early: " + (await proc.stderr.read()).decode()  # type: ignore[union-attr]
                printed.append(line.decode())
        ws_url = next(x.split(": ", 1)[1].strip() for x in printed if x.startswith("devices connect to:"))
        device = await ScriptedDevice.connect(ws_url)
        await device.hello()
        assert (await device.say("hello")).audio, "a device can talk to the demo right away"
        await device.close()
        pids = [p for p in (data / "services").rglob("postmaster.pid")]
        assert pids, "embedded PostgreSQL was running"
        proc.terminate()
        async with asyncio.timeout(60):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 143
    assert not list((data / "services").rglob("postmaster.pid")), "PostgreSQL stopped"
    ps = await asyncio.to_thread(subprocess.run, ["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "no server process of this data dir is left"
