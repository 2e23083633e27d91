"""The MySQL/MariaDB source, read-only.

One connection reads every table from one consistent snapshot (``START TRANSACTION WITH CONSISTENT
SNAPSHOT`` in a ``READ ONLY`` session, so the server itself refuses any write), a page of rows at a time by
primary key: memory holds one page, whatever the table's size. A second connection answers the small
look-ups a batch needs (which ids exist, which keys are used by an earlier row).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncmy
from asyncmy.errors import MySQLError

from server.migrate.errors import MigrationError

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class MysqlSettings:
    host: str = "localhost"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = "xiaozhi_admin"

    def describe(self) -> str:
        return f"MySQL {self.user}@{self.host}:{self.port}/{self.database}"


def _explain(settings: MysqlSettings, exc: BaseException) -> MigrationError:
    if isinstance(exc, MySQLError) and exc.args:
        code = exc.args[0]
        text = exc.args[1] if len(exc.args) > 1 else ""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if code == 1045:
            return MigrationError(f"{settings.describe()}: access denied (check --mysql-user / --mysql-password)")
        if code == 1049:
            return MigrationError(f"{settings.describe()}: database does not exist")
        if code in (2003, 2005, 2006, 2013):
            return MigrationError(f"{settings.describe()} is unreachable: {text}")
        return MigrationError(f"{settings.describe()}: {text} (MySQL error {code})")
    reason = str(exc) or type(exc).__name__
    return MigrationError(f"{settings.describe()} is unreachable: {reason}")


class MysqlSource:
    def __init__(self, settings: MysqlSettings, stream: Any, lookup: Any) -> None:
        self.settings = settings
        self._stream = stream
        self._lookup = lookup
        self._lookup_lock = asyncio.Lock()  # parallel writers share the look-up connection, one query at a time

    @classmethod
    async def open(cls, settings: MysqlSettings) -> MysqlSource:
        conns: list[Any] = []
        try:
            for _ in range(2):
                conn = await asyncio.wait_for(
                    asyncmy.connect(
                        host=settings.host,
                        port=settings.port,
                        user=settings.user,
                        password=settings.password,
                        database=settings.database,
                        charset="utf8mb4",
                        use_unicode=False,  # text as bytes: mysql_tables decodes it and names a broken value
                        connect_timeout=CONNECT_TIMEOUT_S,
                        autocommit=True,
                    ),
                    CONNECT_TIMEOUT_S + 5,
                )
                conns.append(conn)
                async with conn.cursor() as cur:
                    # TIMESTAMP columns in UTC; a slow target must not make the server drop the stream.
                    await cur.execute("SET SESSION time_zone = '+00:00', SESSION net_write_timeout = 3600")
                    await cur.execute("SET SESSION TRANSACTION READ ONLY")
            async with conns[0].cursor() as cur:
                await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        except (MySQLError, OSError, TimeoutError) as exc:
            for conn in conns:
                conn.close()
            raise _explain(settings, exc) from None
        return cls(settings, conns[0], conns[1])

    def close(self) -> None:
        for conn in (self._stream, self._lookup):
            conn.close()

    async def _query(self, conn: Any, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            if conn is self._lookup:
                async with self._lookup_lock, conn.cursor() as cur:
                    await cur.execute(sql, args)
                    return list(await cur.fetchall())
            async with conn.cursor() as cur:
                await cur.execute(sql, args)
                return list(await cur.fetchall())
        except (MySQLError, OSError) as exc:
            raise _explain(self.settings, exc) from None

    async def tables(self) -> set[str]:
        rows = await self._query(self._stream, "SHOW TABLES")
        return {_str(r[0]) for r in rows}

    async def columns(self, table: str) -> list[str]:
        rows = await self._query(
            self._stream,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        )
        return [_str(r[0]) for r in rows]

    async def unique_keys(self, table: str) -> set[tuple[str, ...]]:
        """The column sets MySQL itself keeps unique in this table (its collation compares at least as
        loosely as PostgreSQL's equality, so these need no duplicate check of ours)."""
        rows = await self._query(
            self._stream,
            "SELECT index_name, column_name FROM information_schema.statistics WHERE table_schema = DATABASE() "
            "AND table_name = %s AND non_unique = 0 ORDER BY index_name, seq_in_index",
            (table,),
        )
        found: dict[str, list[str]] = {}
        for index, column in rows:
            found.setdefault(_str(index), []).append(_str(column))
        return {tuple(cols) for cols in found.values()}

    async def count(self, table: str) -> int:
        rows = await self._query(self._stream, f"SELECT COUNT(*) FROM `{table}`")
        return int(rows[0][0])

    async def stream(
        self, table: str, columns: Sequence[str], batch_size: int
    ) -> AsyncIterator[tuple[list[int], list[tuple[Any, ...]]]]:
        """(type codes of the columns, rows) in pages of ``batch_size``, in id order, all from the snapshot.

        Pages by primary key (``WHERE id > last ORDER BY id LIMIT n``) rather than one unbuffered SELECT:
        asyncmy's unbuffered cursor does not stop reading the socket while we write, so a slow target would
        let the rest of the table pile up in its buffer. A page is one short query in the same consistent
        snapshot, so the result is the same and memory holds one page."""
        names = ", ".join(f"`{c}`" for c in columns)
        id_pos = list(columns).index("id")
        last: Any = None
        try:
            async with self._stream.cursor() as cur:
                while True:
                    if last is None:
                        await cur.execute(f"SELECT {names} FROM `{table}` ORDER BY `id` LIMIT %s", (batch_size,))
                    else:
                        await cur.execute(
                            f"SELECT {names} FROM `{table}` WHERE `id` > %s ORDER BY `id` LIMIT %s", (last, batch_size)
                        )
                    codes = [d[1] for d in cur.description]
                    rows = list(await cur.fetchall())
                    if not rows:
                        return
                    yield codes, rows
                    if len(rows) < batch_size:
                        return
                    last = rows[-1][id_pos]
        except (MySQLError, OSError) as exc:
            raise _explain(self.settings, exc) from None

    async def existing_ids(self, table: str, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        marks = ", ".join(["%s"] * len(ids))
        rows = await self._query(self._lookup, f"SELECT `id` FROM `{table}` WHERE `id` IN ({marks})", list(ids))
        return {int(r[0]) for r in rows}

    async def key_owners(
        self, table: str, key: Sequence[str], values: Sequence[tuple[str, ...]]
    ) -> list[tuple[Any, ...]]:
        """(id, *key) of every source row whose key equals one of ``values`` under MySQL's collation (a superset
        of exact equality; the caller compares exactly)."""
        if not values:
            return []
        cols = ", ".join(f"`{c}`" for c in key)
        if len(key) == 1:
            where = f"`{key[0]}` IN ({', '.join(['%s'] * len(values))})"
            args: list[Any] = [v[0] for v in values]
        else:
            one = "(" + ", ".join(["%s"] * len(key)) + ")"
            where = f"({cols}) IN ({', '.join([one] * len(values))})"
            args = [x for v in values for x in v]
        rows = await self._query(self._lookup, f"SELECT `id`, {cols} FROM `{table}` WHERE {where}", args)
        return [(int(r[0]), *(_str(x) for x in r[1:])) for r in rows]


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
