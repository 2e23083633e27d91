from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.storage.errors import InvalidInput
from server.storage.keys import audio_object_key, safe_segment

WHEN = datetime(2026, 12, 3, 8, 30, 1, 123456, tzinfo=UTC)


def test_key_layout_of_the_design() -> None:
    key = audio_object_key("aa:bb:cc:dd:ee:ff", "sess-1", "user", WHEN, "opus")
    assert key == f"aa-bb-cc-dd-ee-ff/2026-12-03/sess-1/user-{int(WHEN.timestamp() * 1e6)}.opus"


def test_date_folder_is_utc_whatever_the_callers_zone() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=8)))
    assert audio_object_key("d", "s", "tts", local, "opus").split("/")[1] == "2026-12-03"


@pytest.mark.parametrize("bad", ["..", "../../etc", "/abs/path", "a/b", "dev\x00ice", "  ", ".hidden"])
def test_unsafe_device_ids_cannot_escape_their_folder(bad: str) -> None:
    if not bad.strip():
        with pytest.raises(InvalidInput):
            safe_segment(bad)
        return
    seg = safe_segment(bad)
    assert "/" not in seg and not seg.startswith(".") and seg not in ("", ".", "..") and "\x00" not in seg


def test_distinct_ids_that_clean_alike_stay_distinct() -> None:
    assert safe_segment("a/b") != safe_segment("a_b")
    assert safe_segment("a?b") != safe_segment("a*b")


@given(st.text(min_size=1, max_size=300).filter(lambda s: s.strip()))
def test_any_id_becomes_one_safe_segment(value: str) -> None:
    seg = safe_segment(value)
    assert seg and "/" not in seg and not seg.startswith(".") and len(seg) <= 111
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-~") for ch in seg)


def test_bad_parts_are_refused() -> None:
    with pytest.raises(InvalidInput):
        audio_object_key("d", "s", "robot", WHEN, "opus")
    with pytest.raises(InvalidInput):
        audio_object_key("d", "s", "user", WHEN, "flac")
    with pytest.raises(InvalidInput):
        audio_object_key("d", "s", "user", WHEN.replace(tzinfo=None), "opus")
