"""Connection identity from handshake headers, with the browsers' query-parameter fallback (spec §1.1)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from urllib.parse import parse_qs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol.headers import ConnectionInfo, HandshakeError, normalize_device_id, parse_connection

CLIENT = "4f1c3b1e-7d0a-4a4e-9c59-2e0f5e7a1b22"
# As WebsocketProtocol::OpenAudioChannel sets them.
FIRMWARE_HEADERS = {
    "Authorization": "Bearer test-token",
    "Protocol-Version": "1",
    "Device-Id": "a1:b2:c3:d4:e5:f6",
    "Client-Id": CLIENT,
}


class CaseInsensitiveHeaders(Mapping[str, str]):
    """Like the header objects of websockets/aiohttp: lookups ignore case."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {key.lower(): (key, value) for key, value in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def refused(headers: Mapping[str, str], query: Mapping[str, list[str] | str] | None = None) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        parse_connection(headers, query or {})
    assert info.value.status == 400
    assert str(info.value) == f"400 {info.value.reason}"
    return info.value


def test_firmware_headers() -> None:
    assert parse_connection(FIRMWARE_HEADERS, {}) == ConnectionInfo(
        device_id="a1:b2:c3:d4:e5:f6", client_id=CLIENT, protocol_version=1, token="test-token"
    )


def test_case_insensitive_mapping() -> None:
    headers = CaseInsensitiveHeaders({"device-id": "a1:b2:c3:d4:e5:f6", "PROTOCOL-VERSION": "3"})
    info = parse_connection(headers, {})
    assert (info.device_id, info.protocol_version, info.client_id, info.token) == ("a1:b2:c3:d4:e5:f6", 3, None, None)


def test_plain_dict_with_lowercase_names() -> None:
    # aiohttp/websockets lowercase nothing, but proxies and ASGI servers do.
    headers = {"device-id": "dev", "client-id": "c", "protocol-version": "2", "authorization": "bearer tok"}
    assert parse_connection(headers, {}) == ConnectionInfo("dev", "c", 2, "tok")


def test_query_fallback_for_browsers() -> None:
    query = parse_qs(
        "device-id=A1:B2:C3:D4:E5:F6&client-id=web_test_client&authorization=Bearer%20tok&protocol-version=2"
    )
    assert parse_connection({}, query) == ConnectionInfo("a1:b2:c3:d4:e5:f6", "web_test_client", 2, "tok")


def test_query_with_plain_string_values() -> None:
    assert parse_connection({}, {"device-id": "dev", "authorization": "tok"}) == ConnectionInfo("dev", None, 1, "tok")


def test_repeated_query_parameter_uses_the_first() -> None:
    assert parse_connection({}, {"device-id": ["first", "second"]}).device_id == "first"


def test_header_wins_over_query() -> None:
    info = parse_connection(FIRMWARE_HEADERS, {"device-id": ["other"], "protocol-version": ["3"]})
    assert info.device_id == "a1:b2:c3:d4:e5:f6" and info.protocol_version == 1


def test_empty_header_falls_back_to_query() -> None:
    assert parse_connection({"Device-Id": "  "}, {"device-id": ["dev"]}).device_id == "dev"


def test_values_are_stripped() -> None:
    info = parse_connection({"Device-Id": " dev ", "Client-Id": " c ", "Protocol-Version": " 2 "}, {})
    assert (info.device_id, info.client_id, info.protocol_version) == ("dev", "c", 2)


def test_defaults() -> None:
    assert parse_connection({"Device-Id": "dev"}, {}) == ConnectionInfo("dev", None, 1, None)
    assert parse_connection({"Device-Id": "dev", "Authorization": "Bearer "}, {}).token is None
    assert parse_connection({"Device-Id": "dev", "Protocol-Version": ""}, {}).protocol_version == 1


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, {}), ({"Device-Id": ""}, {}), ({"Device-Id": "   "}, {"device-id": [""]}), ({}, {"device-id": []})],
)
def test_missing_device_id(headers: dict[str, str], query: dict[str, list[str]]) -> None:
    assert refused(headers, query).reason == "missing Device-Id header (or device-id query parameter)"


def test_device_id_length_limit() -> None:
    assert parse_connection({"Device-Id": "d" * 128}, {}).device_id == "d" * 128
    assert refused({"Device-Id": "d" * 129}).reason == "Device-Id longer than 128 characters"


@pytest.mark.parametrize("device_id", ["a\x00b", "a\nb", "a\rb", "a\x1bb", "a\x7fb", "a\x85b", "a\tb"])
def test_device_id_control_chars(device_id: str) -> None:
    assert refused({"Device-Id": device_id}).reason == "Device-Id contains control characters"


def test_client_id_is_checked_too() -> None:
    assert refused({"Device-Id": "d", "Client-Id": "c" * 129}).reason == "Client-Id longer than 128 characters"
    assert refused({"Device-Id": "d"}, {"client-id": "a\x00"}).reason == "Client-Id contains control characters"


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("A1:B2:C3:D4:E5:F6", "a1:b2:c3:d4:e5:f6"),
        ("a1:b2:c3:d4:e5:f6", "a1:b2:c3:d4:e5:f6"),
        ("A1-B2-C3-D4-E5-F6", "a1-b2-c3-d4-e5-f6"),
        ("A1:B2-C3:D4:E5:F6", "A1:B2-C3:D4:E5:F6"),  # mixed separators: not a MAC
        ("A1:B2:C3:D4:E5", "A1:B2:C3:D4:E5"),
        ("A1B2C3D4E5F6", "A1B2C3D4E5F6"),
        ("Living-Room-Speaker", "Living-Room-Speaker"),
        ("G1:B2:C3:D4:E5:F6", "G1:B2:C3:D4:E5:F6"),
    ],
)
def test_mac_normalisation(raw: str, normalised: str) -> None:
    assert normalize_device_id(raw) == normalised
    assert parse_connection({"Device-Id": raw}, {}).device_id == normalised


@pytest.mark.parametrize("version", ["1", "2", "3", "02", "000000003"])
def test_protocol_versions(version: str) -> None:
    assert parse_connection({"Device-Id": "d", "Protocol-Version": version}, {}).protocol_version == int(version)


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("0", "unsupported Protocol-Version 0 (supported: 1, 2, 3)"),
        ("4", "unsupported Protocol-Version 4 (supported: 1, 2, 3)"),
        ("1.0", "Protocol-Version must be an integer, got '1.0'"),
        ("-1", "Protocol-Version must be an integer, got '-1'"),
        ("+2", "Protocol-Version must be an integer, got '+2'"),
        ("two", "Protocol-Version must be an integer, got 'two'"),
        ("٢", "Protocol-Version must be an integer, got '٢'"),
        ("9" * 5000, "unsupported Protocol-Version 99999999999999999999 (supported: 1, 2, 3)"),
    ],
)
def test_bad_protocol_version(version: str, reason: str) -> None:
    assert refused({"Device-Id": "d", "Protocol-Version": version}).reason == reason
    assert refused({"Device-Id": "d"}, {"protocol-version": [version]}).reason == reason


def test_authorization_without_bearer() -> None:
    # The firmware leaves tokens that contain a space unprefixed.
    info = parse_connection({"Device-Id": "d", "Authorization": "Token abc"}, {})
    assert info.token == "Token abc"


_header_values = st.text(st.characters(codec=None, categories=None), max_size=140)
_names = st.sampled_from(["Device-Id", "device-id", "Client-Id", "Protocol-Version", "Authorization", "X-Other"])


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(_names, _header_values), query=st.dictionaries(_names, st.lists(_header_values)))
def test_fuzz_only_connection_info_or_handshake_error(headers: dict[str, str], query: dict[str, list[str]]) -> None:
    try:
        info = parse_connection(headers, query)
    except HandshakeError as exc:
        assert exc.status == 400 and "\n" not in exc.reason
        return
    assert info.device_id and len(info.device_id) <= 128
    assert info.protocol_version in (1, 2, 3)
