"""HMAC device tokens (spec §1.1), compatible with the Python reference server."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import auth
from server.protocol.auth import AuthError, make_token, parse_authorization, verify_token

SECRET = "my-server-secret"
CLIENT = "4f1c3b1e-7d0a-4a4e-9c59-2e0f5e7a1b22"
DEVICE = "a1:b2:c3:d4:e5:f6"
NOW = 1_750_000_000
DAY = 86400


def reference_token(secret: str, client_id: str, device_id: str, ts: int) -> str:
    """The formula from the spec, written independently of the module under test."""
    digest = hmac.new(secret.encode(), f"{client_id}|{device_id}|{ts}".encode(), hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode().replace("+", "-").replace("/", "_").rstrip("=")
    return f"{signature}.{ts}"


def reason(token: str, **kwargs: object) -> str:
    kwargs.setdefault("now", NOW)
    with pytest.raises(AuthError) as info:
        verify_token(SECRET, token, CLIENT, DEVICE, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == str(info.value)
    return info.value.reason


def test_make_token_matches_reference_formula() -> None:
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    assert token == reference_token(SECRET, CLIENT, DEVICE, NOW)
    signature, ts = token.split(".")
    assert ts == str(NOW) and len(signature) == 43 and "=" not in signature


def test_make_token_truncates_fractional_time() -> None:
    assert make_token(SECRET, CLIENT, DEVICE, now=NOW + 0.9) == reference_token(SECRET, CLIENT, DEVICE, NOW)


def test_make_token_uses_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth.time, "time", lambda: NOW + 5.5)
    assert make_token(SECRET, CLIENT, DEVICE).endswith(f".{NOW + 5}")


def test_reference_token_verifies() -> None:
    verify_token(SECRET, reference_token(SECRET, CLIENT, DEVICE, NOW - 3600), CLIENT, DEVICE, now=NOW)


def test_bytes_secret_equals_str_secret() -> None:
    verify_token(SECRET.encode(), make_token(SECRET, CLIENT, DEVICE, now=NOW), CLIENT, DEVICE, now=NOW)


def test_expiry_boundaries() -> None:
    verify_token(SECRET, make_token(SECRET, CLIENT, DEVICE, now=NOW - 30 * DAY), CLIENT, DEVICE, now=NOW)
    assert reason(make_token(SECRET, CLIENT, DEVICE, now=NOW - 30 * DAY - 1)) == "token expired"
    assert reason(make_token(SECRET, CLIENT, DEVICE, now=NOW - 2 * DAY), max_age_s=DAY) == "token expired"


def test_future_boundaries() -> None:
    verify_token(SECRET, make_token(SECRET, CLIENT, DEVICE, now=NOW + 300), CLIENT, DEVICE, now=NOW)
    assert reason(make_token(SECRET, CLIENT, DEVICE, now=NOW + 301)) == "token issued in the future"


def test_verify_uses_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    monkeypatch.setattr(auth.time, "time", lambda: NOW + 31 * DAY)
    with pytest.raises(AuthError, match="token expired"):
        verify_token(SECRET, token, CLIENT, DEVICE)


def test_tampered_tokens_are_refused() -> None:
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    signature, ts = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert reason(f"{flipped}.{ts}") == "bad signature"
    assert reason(f"{signature}.{NOW + 1}") == "bad signature"  # re-dated
    assert reason(f"{signature}.{NOW - 1}") == "bad signature"


def test_token_bound_to_client_device_and_secret() -> None:
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(SECRET, token, CLIENT, "a1:b2:c3:d4:e5:f7", now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(SECRET, token, "other-client", DEVICE, now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token("other-secret", token, CLIENT, DEVICE, now=NOW)


def test_signature_is_checked_before_age() -> None:
    # An expired forgery must not learn that its timestamp was the only problem.
    signature = make_token(SECRET, CLIENT, DEVICE, now=NOW).split(".")[0]
    assert reason(f"{signature}.{NOW - 60 * DAY}") == "bad signature"


def test_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    verify_token(SECRET, make_token(SECRET, CLIENT, DEVICE, now=NOW), CLIENT, DEVICE, now=NOW)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "nodot" + "a" * 43,
        "a" * 43 + ".",
        "." + str(NOW),
        "a" * 42 + "." + str(NOW),  # signature too short
        "a" * 44 + "." + str(NOW),  # too long
        "a" * 42 + "=." + str(NOW),  # padded
        "a" * 42 + "+." + str(NOW),  # standard, not url-safe, alphabet
        "a" * 43 + ".+" + str(NOW),
        "a" * 43 + ". " + str(NOW),
        "a" * 43 + ".1_750_000_000",
        "a" * 43 + ".١٧٥",  # Arabic-Indic digits: int() would accept them
        "a" * 43 + "." + str(NOW) + ".1",
        "a" * 43 + ".-5",
        "a" * 43 + "." + "9" * 13,
        "Bearer " + "a" * 43 + "." + str(NOW),
        "a" * 43 + "." + str(NOW) + "\n",
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert reason(token) == "malformed token"


def test_non_string_token_is_malformed() -> None:
    with pytest.raises(AuthError, match="malformed token"):
        verify_token(SECRET, None, CLIENT, DEVICE, now=NOW)  # type: ignore[arg-type]


def test_missing_client_id() -> None:
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    with pytest.raises(AuthError, match="client_id and device_id are required"):
        verify_token(SECRET, token, None, DEVICE, now=NOW)  # type: ignore[arg-type]


def test_separator_in_ids_is_refused() -> None:
    # ("a|b", "c") and ("a", "b|c") sign the same string; neither may be issued nor accepted.
    with pytest.raises(AuthError, match="must not contain '\\|'"):
        make_token(SECRET, "a|b", "c", now=NOW)
    forged = reference_token(SECRET, "a", "b|c", NOW)
    with pytest.raises(AuthError, match="must not contain '\\|'"):
        verify_token(SECRET, forged, "a", "b|c", now=NOW)


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret must not be empty"):
        make_token("", CLIENT, DEVICE, now=NOW)
    with pytest.raises(ValueError, match="secret must not be empty"):
        verify_token(b"", "a" * 43 + ".1", CLIENT, DEVICE, now=NOW)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.123", "abc.123"),
        ("bearer abc.123", "abc.123"),
        ("BEARER   abc.123", "abc.123"),
        ("Bearer\tabc.123", "abc.123"),
        ("  Bearer abc.123  ", "abc.123"),
        ("abc.123", "abc.123"),
        ("Bearerabc.123", "Bearerabc.123"),
        ("Bearer", ""),
        ("Bearer   ", ""),
        ("", ""),
        ("Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz"),
    ],
)
def test_parse_authorization(header: str, token: str) -> None:
    assert parse_authorization(header) == token


def test_header_round_trip() -> None:
    # What the firmware sends: the OTA token with "Bearer " prefixed.
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    verify_token(SECRET, parse_authorization(f"Bearer {token}"), CLIENT, DEVICE, now=NOW)


_any_text = st.text(st.characters(codec=None, categories=None), max_size=20)  # surrogates included


def test_lone_surrogate_ids_fail_cleanly() -> None:
    token = make_token(SECRET, CLIENT, DEVICE, now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(SECRET, token, CLIENT, "\ud800", now=NOW)


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=80), client=_any_text, device=_any_text)
def test_fuzz_verify_only_raises_auth_error(token: str, client: str, device: str) -> None:
    try:
        verify_token(SECRET, token, client, device, now=NOW)
    except AuthError:
        return
    raise AssertionError("a random token verified")


@settings(max_examples=100, deadline=None)
@given(
    client=st.text(max_size=40).filter(lambda s: "|" not in s),
    device=st.text(max_size=40).filter(lambda s: "|" not in s),
    age=st.integers(0, 30 * DAY),
)
def test_fuzz_issued_tokens_verify(client: str, device: str, age: int) -> None:
    verify_token(SECRET, make_token(SECRET, client, device, now=NOW - age), client, device, now=NOW)
