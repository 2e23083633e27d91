"""The migration's pure parts: Redis key names and records, sessions and ids, MySQL row conversion, report."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from server.migrate.mysql_tables import MYSQL_DATETIME, MYSQL_TIMESTAMP, TABLES, RowConverter, RowRefused
from server.migrate.progress import Progress
from server.migrate.redis_source import Refused, decode_message, parse_key
from server.migrate.report import Report
from server.migrate.sessions_split import SessionSplitter, message_id, parse_gap

MIN = 60 * 10**9


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"xz:llm:aa:bb:cc:dd:ee:ff", ("dialogue", "aa:bb:cc:dd:ee:ff", None)),
        (b"xz::llm:aa:bb:cc:dd:ee:ff", ("dialogue", "aa:bb:cc:dd:ee:ff", None)),  # the Go default's double colon
        (b"xz:llm:system:aa:bb:cc:dd:ee:ff", ("system?", "aa:bb:cc:dd:ee:ff", None)),
        (b"xz:conversation:aa:bb:cc:dd:ee:ff", ("list", "aa:bb:cc:dd:ee:ff", None)),
        (b"xz:conversation:aa:bb:cc:dd:ee:ff:s-1", ("list", "aa:bb:cc:dd:ee:ff", "s-1")),
        (b"xz:conversation:AA-BB-CC-DD-EE-FF:s:2", ("list", "AA-BB-CC-DD-EE-FF", "s:2")),
        (b"xz:conversation:robot:7", ("list", "robot", "7")),
        (b"xz:conversation:robot", ("list", "robot", None)),
        (b"xz:memory:aa", None),
        (b"xzz:llm:aa", None),
    ],
)
def test_key_names(key: bytes, expected: tuple[str, str, str | None] | None) -> None:
    assert parse_key(key, "xz:") == expected


def test_a_key_name_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(Refused, match="key name is not valid UTF-8"):
        parse_key(b"xz:llm:\xff", "xz:")


def test_decode_an_eino_message() -> None:
    raw = json.dumps({
        "role": "assistant", "content": "好", "name": "bot", "extra": {"x": 1},
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }, ensure_ascii=False).encode()  # fmt: skip
    role, content, multi, tools, tool_call_id, meta, stamp = decode_message(raw)
    assert (role, content, multi, tool_call_id, stamp) == ("assistant", "好", None, None, None)
    assert json.loads(tools)[0]["id"] == "c"
    assert json.loads(meta) == {"name": "bot"}
    assert decode_message(b'{"role":"user","content":null,"timestamp":1700000000123}', with_timestamp=True)[1:] == (
        "", None, None, None, None, 1700000000123
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "invalid JSON"),
        (b'{"role": "user", "content": NaN}', "invalid JSON: NaN is not valid JSON"),
        (b'"just a string"', "not a JSON object but str"),
        (b'{"role": "robot"}', "unknown role 'robot'"),
        (b'{"role": ""}', "missing role"),
        (b'{"role": "user", "content": 5}', "content is int, not text"),
        (b'{"role": "user", "tool_calls": {"id": 1}}', "tool_calls is dict, not a list"),
        (b'{"role": "tool", "tool_call_id": "a\\nb"}', "tool_call_id 'a\\nb' contains control characters"),
        (b'{"role": "user", "content": "\xc3"}', "not valid UTF-8 (byte 0xc3 at offset 29)"),
        (b'{"role": "user", "content": "a\\u0000b"}', "content contains a NUL character"),
        (b'{"role": "user", "tool_calls": [{"x": "\\u0000"}]}', "tool_calls contains a \\u0000 escape"),
        (b'{"role": "user", "content": "\\udc00"}', "content contains a lone UTF-16 surrogate"),
    ],
)
def test_bad_records_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(Refused) as caught:
        decode_message(raw)
    assert str(caught.value).startswith(reason)


def test_sessions_split_at_gaps_longer_than_the_limit() -> None:
    splitter = SessionSplitter("aa:bb", gap_ns=30 * MIN)
    times = [0, MIN, 32 * MIN, 62 * MIN, 62 * MIN + 1, 200 * MIN]
    ids = [splitter.session_for(t) for t in times]
    assert ids[0] == ids[1] != ids[2] == ids[3] == ids[4] != ids[5]  # exactly 30 min apart stays together
    again = SessionSplitter("aa:bb", gap_ns=30 * MIN)
    assert ids == [again.session_for(t) for t in times]  # deterministic
    assert all(len(i) <= 64 and ":" not in i for i in ids)
    assert SessionSplitter("aa:bb:cc", gap_ns=30 * MIN).session_for(0) != ids[0]


def test_message_ids_are_deterministic_time_ordered_and_fit_the_column() -> None:
    a = message_id(b"dev\0123\0{}", 1_700_000_000_000)
    assert a == message_id(b"dev\0123\0{}", 1_700_000_000_000)
    assert a != message_id(b"dev\0124\0{}", 1_700_000_000_000)
    assert message_id(b"x", 1) < message_id(b"x", 2) and len(a) == 32


@pytest.mark.parametrize(("text", "ns"), [("30", 30 * MIN), ("30m", 30 * MIN), ("90s", 90 * 10**9), ("2h", 120 * MIN)])
def test_session_gap_flag(text: str, ns: int) -> None:
    assert parse_gap(text) == ns


@pytest.mark.parametrize("text", ["0", "soon", "-5m", "5d"])
def test_bad_session_gaps(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than 0"):
        parse_gap(text)


def devices_converter(zone: str = "UTC") -> RowConverter:
    spec = TABLES["devices"]
    codes = [MYSQL_DATETIME if c.kind == "time" else 0 for c in spec.columns]
    codes[spec.index("created_at")] = MYSQL_TIMESTAMP
    return RowConverter(spec, list(spec.column_names), codes, ZoneInfo(zone))


def test_convert_a_device_row() -> None:
    converter = devices_converter("Asia/Shanghai")
    t = datetime(2024, 1, 2, 3, 4, 5)
    row = (7, 3, 0, b"aa:bb", "厨房".encode(), None, b"psk", 1, "0000-00-00 00:00:00", t, t)
    values, notes = converter.convert(row)
    assert values == (7, 3, None, "aa:bb", "厨房", None, "psk", True, None, t, t)
    assert notes is None
    assert converter.zones == {"last_active_at": "Asia/Shanghai", "created_at": "UTC", "updated_at": "Asia/Shanghai"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({0: None}, "missing id"),
        ({0: 2**64 - 1}, "id 18446744073709551615 is out of PostgreSQL bigint range"),
        ({3: None}, "missing device_code"),
        ({3: b"\xff"}, "device_code is not valid UTF-8 (byte 0xff at offset 0)"),
        ({3: b"x" * 129}, "device_code is 129 characters long; the target allows 128"),
        ({4: b"a\x00b"}, "device_name contains a NUL character"),
        ({9: "2024-13-45"}, "created_at: '2024-13-45' is not a valid date and time"),
        ({7: "yes"}, "activated: 'yes' is not a boolean"),
    ],
)
def test_bad_rows_are_refused(change: dict[int, object], reason: str) -> None:
    row = [7, 3, 0, b"aa:bb", None, None, None, 1, None, None, None]
    for pos, value in change.items():
        row[pos] = value
    with pytest.raises(RowRefused) as caught:
        devices_converter().convert(tuple(row))
    assert str(caught.value).startswith(reason)


def test_nulls_become_the_targets_defaults_and_are_noted() -> None:
    spec = TABLES["configs"]
    converter = RowConverter(spec, ["id", "type", "name", "config_id"], [0, 0, 0, 0], ZoneInfo("UTC"))
    values, notes = converter.convert((1, b"llm", b"n", b"c"))
    assert values == (1, "llm", "n", "c", "", "{}", True, False, None, None)
    assert notes == [
        "provider was NULL: stored as ''",
        "json_data was NULL: stored as '{}'",
        "enabled was NULL: stored as True",
        "is_default was NULL: stored as False",
        "created_at was NULL: stored as the time of the migration",
        "updated_at was NULL: stored as the time of the migration",
    ]


def test_report_lines_and_file(tmp_path: Path) -> None:
    report = Report(tmp_path / "r.jsonl")
    assert report.lines() == ["report: nothing skipped or adjusted"]
    assert not report.path.exists()
    report.skip("invalid JSON: Expecting value", {"key": "k", "score": 5}, b"\xff{")
    report.adjust("dangling reference: x", {"table": "devices", "id": 1})
    report.close()
    lines = [json.loads(x) for x in report.path.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {"action": "skipped", "key": "k", "score": 5, "reason": "invalid JSON: Expecting value",
                        "record": "\\xff{"}  # fmt: skip
    assert report.lines()[0].startswith("report: 1 skipped, 1 adjusted; every one is listed in")


def test_progress_without_a_terminal_prints_lines() -> None:
    out = io.StringIO()
    with Progress("users", 10, stream=out, every_s=0) as bar:
        bar.advance(4)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("users          [############..................] 4/10  40%")
    assert len(lines) == 2  # one on the way, one at the end
