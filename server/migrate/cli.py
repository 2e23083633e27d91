"""``xiaozhi migrate mysql-to-pg | redis-to-pg | verify``: flags and commands.

Connection flags are the design's (S23/S24). The ``--pg-*`` flags default to the configuration's
``database`` section (so ``DB_HOST`` … apply), the ``--redis-*`` flags and ``--key-prefix`` to its ``redis``
section, ``--mysql-password`` to ``$MYSQL_PWD`` (the MySQL client's own variable: passwords on a command
line are visible to every user of the machine).

Exit status: 0 everything migrated (verify: everything present); 3 finished, but records were skipped —
the report file lists each with its reason (verify: something is missing); 1 a failure (unreachable,
refused login, lost connection); 2 bad flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.cli import flags
from server.config import RedisSettings as ConfiguredRedis
from server.config import Settings
from server.migrate.errors import EXIT_INCOMPLETE, EXIT_OK, MigrationError, UsageError
from server.migrate.mysql_source import MysqlSettings, MysqlSource
from server.migrate.mysql_tables import TABLE_ORDER
from server.migrate.mysql_to_pg import migrate_mysql, parse_tables
from server.migrate.mysql_to_pg import summary_lines as mysql_summary
from server.migrate.pg_target import Target, open_target, target_settings
from server.migrate.redis_source import RedisSettings, RedisSource
from server.migrate.redis_to_pg import migrate_redis
from server.migrate.redis_to_pg import summary_lines as redis_summary
from server.migrate.report import Report
from server.migrate.sessions_split import parse_gap
from server.migrate.verify import check_lines, device_lines, verify_mysql, verify_redis
from server.storage.errors import StorageError

DEFAULT_BATCH = 5000
PG_FLAGS = ("pg_host", "pg_port", "pg_user", "pg_password", "pg_db", "pg_sslmode")


def add_migrate_parser(sub: Any) -> None:
    """Add ``migrate`` with its three commands to the ``xiaozhi`` subcommands."""
    migrate = sub.add_parser("migrate", help="bring an existing server's MySQL and Redis data into PostgreSQL")
    commands = migrate.add_subparsers(dest="migrate_command", required=True, metavar="COMMAND")

    mysql = commands.add_parser("mysql-to-pg", help="users, agents, devices, configs, global_roles (S23)")
    _mysql_flags(mysql)
    _pg_flags(mysql)
    mysql.add_argument("--tables", type=_tables, default=list(TABLE_ORDER), help="comma-separated (default: all)")
    _run_flags(mysql)
    mysql.add_argument("--writers", type=_writers, default=2, help="parallel PostgreSQL connections (2)")
    mysql.set_defaults(run=cmd_mysql_to_pg)

    redis = commands.add_parser("redis-to-pg", help="conversation history and system prompts (S24)")
    _redis_flags(redis)
    _pg_flags(redis)
    _run_flags(redis)
    redis.add_argument("--writers", type=_writers, default=2, help="parallel PostgreSQL connections (2)")
    redis.set_defaults(run=cmd_redis_to_pg)

    verify = commands.add_parser("verify", help="compare source and target counts per table and per device (S25)")
    verify.add_argument("--source", choices=["all", "mysql", "redis"], default="all", help="what to verify")
    _mysql_flags(verify)
    _redis_flags(verify)
    _pg_flags(verify)
    verify.add_argument("--tables", type=_tables, default=list(TABLE_ORDER), help="comma-separated (default: all)")
    verify.add_argument("--batch-size", type=_batch, default=DEFAULT_BATCH)
    verify.add_argument("--all-devices", action="store_true", help="list every device, not only incomplete ones")
    verify.set_defaults(run=cmd_verify)


def _mysql_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MySQL source (read only)")
    g.add_argument("--mysql-host", default="localhost")
    g.add_argument("--mysql-port", type=flags.server_port, default=3306)
    g.add_argument("--mysql-user", default="root")
    g.add_argument("--mysql-password", default=None, help="default: $MYSQL_PWD")
    g.add_argument("--mysql-db", default="xiaozhi_admin")
    g.add_argument(
        "--mysql-timezone",
        type=_zone,
        default=UTC,
        help="zone of DATETIME values (default UTC, as the Go manager writes)",
    )


def _redis_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Redis source (read only)")
    g.add_argument("--redis-host", help="default: redis.host of the configuration")
    g.add_argument("--redis-port", type=flags.server_port)
    g.add_argument("--redis-password")
    g.add_argument("--redis-db", type=flags.non_negative_int)
    g.add_argument("--key-prefix", help="default: redis.key_prefix ('xiaozhi'); with or without the trailing colon")
    g.add_argument(
        "--session-gap", type=_gap, default=parse_gap("30m"), help="silence that starts a new session (default 30m)"
    )


def _pg_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("PostgreSQL target (default: the configuration's database section)")
    g.add_argument("--pg-host")
    g.add_argument("--pg-port", type=flags.server_port)
    g.add_argument("--pg-user")
    g.add_argument("--pg-password")
    g.add_argument("--pg-db")
    g.add_argument("--pg-sslmode", choices=["disable", "require", "verify-ca", "verify-full"])


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="read and validate everything, report what would be written")
    p.add_argument("--batch-size", type=_batch, default=DEFAULT_BATCH, help=f"rows per transaction ({DEFAULT_BATCH})")
    p.add_argument("--report", type=Path, help="report file (default: ./xiaozhi-migrate-<source>-<time>.jsonl)")


# ---- flag types -----------------------------------------------------------------------------------------


_batch = flags.whole_number(1, 100_000)
_writers = flags.whole_number(1, 8)


def _tables(text: str) -> list[str]:
    try:
        return parse_tables(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gap(text: str) -> int:
    try:
        return parse_gap(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _zone(text: str) -> tzinfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r} (e.g. UTC, Asia/Shanghai)") from None


# ---- connections from flags ------------------------------------------------------------------------------


def _mysql_settings(args: argparse.Namespace) -> MysqlSettings:
    password = args.mysql_password if args.mysql_password is not None else os.environ.get("MYSQL_PWD", "")
    return MysqlSettings(args.mysql_host, args.mysql_port, args.mysql_user, password, args.mysql_db)


def _redis_settings(args: argparse.Namespace, settings: Settings) -> RedisSettings:
    base = settings.redis or ConfiguredRedis()  # the section is optional (S31)
    return RedisSettings(
        host=args.redis_host or base.host,
        port=args.redis_port or base.port,
        password=args.redis_password if args.redis_password is not None else base.password.get_secret_value(),
        db=base.db if args.redis_db is None else args.redis_db,
        key_prefix=base.key_prefix if args.key_prefix is None else args.key_prefix,
    )


async def _target(args: argparse.Namespace, settings: Settings, *, dry_run: bool) -> Target:
    if settings.database.embedded and all(getattr(args, f) is None for f in PG_FLAGS):
        raise UsageError(
            "no target PostgreSQL: the configuration uses the embedded one, which migrate does not start; "
            "give --pg-host/--pg-port/--pg-user/--pg-db or a config file whose database section names the server"
        )
    db = target_settings(
        settings.database,
        host=args.pg_host,
        port=args.pg_port,
        user=args.pg_user,
        password=args.pg_password,
        database=args.pg_db,
        sslmode=args.pg_sslmode,
    )
    return await open_target(db, dry_run=dry_run)


def _report(args: argparse.Namespace, source: str) -> Report:
    if args.report:
        return Report(args.report)
    stem = f"xiaozhi-migrate-{source}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    path, n = Path(f"{stem}.jsonl"), 1
    while path.exists():  # a second run in the same second gets its own file
        n += 1
        path = Path(f"{stem}-{n}.jsonl")
    return Report(path)


async def _guarded(body: Callable[[], Awaitable[int]]) -> int:
    """Expected failures → one ``error:`` line and their exit status, never a traceback."""
    try:
        return await body()
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except StorageError as exc:
        print(f"error: target {exc}", file=sys.stderr)
        return MigrationError.exit_code


def _out(lines: list[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


# ---- commands -------------------------------------------------------------------------------------------


async def cmd_mysql_to_pg(args: argparse.Namespace, settings: Settings) -> int:
    async def body() -> int:
        mysql = _mysql_settings(args)
        source = await MysqlSource.open(mysql)
        try:
            target = await _target(args, settings, dry_run=args.dry_run)
            try:
                _out(_header("mysql-to-pg", mysql.describe(), target, args.dry_run))
                report = _report(args, "mysql")
                try:
                    results = await migrate_mysql(
                        source,
                        target,
                        args.tables,
                        batch_size=args.batch_size,
                        dry_run=args.dry_run,
                        datetime_tz=args.mysql_timezone,
                        report=report,
                        writers=args.writers,
                    )
                finally:
                    report.close()
            finally:
                await target.close()
        finally:
            source.close()
        _out(mysql_summary(results, dry_run=args.dry_run) + report.lines())
        return EXIT_INCOMPLETE if report.skipped else EXIT_OK

    return await _guarded(body)


async def cmd_redis_to_pg(args: argparse.Namespace, settings: Settings) -> int:
    async def body() -> int:
        redis_settings = _redis_settings(args, settings)
        source = await RedisSource.open(redis_settings)
        try:
            target = await _target(args, settings, dry_run=args.dry_run)
            try:
                where = f"{redis_settings.describe()} prefix {source.prefix or '(none)'!r}"
                _out(_header("redis-to-pg", where, target, args.dry_run))
                report = _report(args, "redis")
                try:
                    result = await migrate_redis(
                        source,
                        target,
                        batch_size=args.batch_size,
                        gap_ns=args.session_gap,
                        dry_run=args.dry_run,
                        report=report,
                        writers=args.writers,
                    )
                finally:
                    report.close()
            finally:
                await target.close()
        finally:
            await source.close()
        _out(redis_summary(result, dry_run=args.dry_run) + report.lines())
        return EXIT_INCOMPLETE if report.skipped else EXIT_OK

    return await _guarded(body)


def _header(command: str, source: str, target: Target, dry_run: bool) -> list[str]:
    lines = [f"{command}: {source} → {target.describe()}"]
    if dry_run:
        lines.append(
            "DRY RUN: nothing is written" + (" (the target has no schema yet)" if target.schema_missing else "")
        )
    return lines


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    async def body() -> int:
        target = await _target(args, settings, dry_run=True)
        complete = True
        try:
            if target.schema_missing:
                raise MigrationError(f"{target.describe()} has no schema: nothing was migrated there yet")
            if args.source in ("all", "mysql"):
                mysql = _mysql_settings(args)
                source = await MysqlSource.open(mysql)
                try:
                    checks = await verify_mysql(
                        source, target.conn, args.tables, batch_size=args.batch_size, datetime_tz=args.mysql_timezone
                    )
                finally:
                    source.close()
                _out([f"{mysql.describe()} → {target.describe()}", *check_lines("table", checks), ""])
                complete &= all(c.ok for c in checks)
            if args.source in ("all", "redis"):
                redis_settings = _redis_settings(args, settings)
                rsource = await RedisSource.open(redis_settings)
                try:
                    totals, devices, bad_keys = await verify_redis(
                        rsource, target.conn, gap_ns=args.session_gap, batch_size=args.batch_size
                    )
                finally:
                    await rsource.close()
                lines = [f"{redis_settings.describe()} prefix {rsource.prefix!r} → {target.describe()}"]
                lines += check_lines("table", totals)
                if bad_keys:
                    lines.append(f"{bad_keys:,} keys could not be read (the migration's report names them)")
                lines += device_lines(devices, show_all=args.all_devices)
                _out(lines)
                complete &= all(c.ok for c in totals)
        finally:
            await target.close()
        _out(["verify: complete" if complete else "verify: MISSING records: re-run the migration, then its report"])
        return EXIT_OK if complete else EXIT_INCOMPLETE

    return await _guarded(body)
