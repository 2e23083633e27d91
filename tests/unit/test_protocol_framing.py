"""Binary frames v1/v2/v3 (spec §1.3): exact big-endian layouts, every refusal, and fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol.framing import (
    DEFAULT_MAX_AUDIO_PAYLOAD,
    SUPPORTED_VERSIONS,
    BinaryFrame,
    FrameError,
    decode_frame,
    encode_frame,
)

OPUS = bytes.fromhex("58 0b e4 1c 7f 00 9a")  # TOC 0x58: SILK WB 60 ms, as the firmware sends


# --- exact layouts -------------------------------------------------------------------------------


def test_v1_is_the_raw_packet() -> None:
    assert encode_frame(1, BinaryFrame("audio", OPUS)) == OPUS
    assert decode_frame(1, OPUS) == BinaryFrame("audio", OPUS, 0)


def test_v1_drops_the_timestamp() -> None:
    assert encode_frame(1, BinaryFrame("audio", OPUS, timestamp_ms=1234)) == OPUS


def test_v2_audio_layout_is_big_endian() -> None:
    frame = BinaryFrame("audio", b"\xaa\xbb\xcc", timestamp_ms=0x01020304)
    expected = (
        b"\x00\x02"  # version 2
        b"\x00\x00"  # type 0 = opus
        b"\x00\x00\x00\x00"  # reserved
        b"\x01\x02\x03\x04"  # timestamp ms
        b"\x00\x00\x00\x03"  # payload_size
        b"\xaa\xbb\xcc"
    )
    assert encode_frame(2, frame) == expected
    assert decode_frame(2, expected) == frame


def test_v2_json_layout() -> None:
    payload = b'{"type":"tts","state":"start"}'
    expected = b"\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1e" + payload
    assert len(payload) == 0x1E
    assert encode_frame(2, BinaryFrame("json", payload)) == expected
    assert decode_frame(2, expected) == BinaryFrame("json", payload, 0)


def test_v2_large_timestamp_and_size() -> None:
    payload = bytes(range(256)) * 2  # 512 = 0x200 bytes
    data = encode_frame(2, BinaryFrame("audio", payload, timestamp_ms=0xFFFF_FFFF))
    assert data[:16] == bytes.fromhex("0002 0000 00000000 ffffffff 00000200")
    assert decode_frame(2, data).timestamp_ms == 0xFFFF_FFFF


def test_v3_audio_layout_is_big_endian() -> None:
    payload = bytes(range(256)) + b"\x01\x02"  # 258 = 0x0102 bytes: byte order is visible
    expected = b"\x00\x00\x01\x02" + payload
    assert encode_frame(3, BinaryFrame("audio", payload)) == expected
    assert decode_frame(3, expected) == BinaryFrame("audio", payload, 0)


def test_v3_json_layout_and_dropped_timestamp() -> None:
    assert encode_frame(3, BinaryFrame("json", b"{}", timestamp_ms=99)) == b"\x01\x00\x00\x02{}"
    assert decode_frame(3, b"\x01\x00\x00\x02{}") == BinaryFrame("json", b"{}")


def test_reserved_fields_are_ignored_on_decode() -> None:
    v2 = b"\x00\x02\x00\x00\xde\xad\xbe\xef\x00\x00\x00\x07\x00\x00\x00\x01\x55"
    assert decode_frame(2, v2) == BinaryFrame("audio", b"\x55", 7)
    assert decode_frame(3, b"\x00\xff\x00\x01\x55") == BinaryFrame("audio", b"\x55")


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = b"\x00\x00\x00\x02hi"
    assert decode_frame(3, bytearray(data)).payload == b"hi"
    assert decode_frame(3, memoryview(data)).payload == b"hi"
    assert isinstance(decode_frame(3, memoryview(data)).payload, bytes)


# v1 has no JSON binary frames (JSON goes in text frames there).
@pytest.mark.parametrize(("version", "kind"), [(1, "audio"), (2, "audio"), (2, "json"), (3, "audio"), (3, "json")])
@pytest.mark.parametrize("size", [1, 2, 300, DEFAULT_MAX_AUDIO_PAYLOAD])
def test_round_trip_every_version_and_kind(version: int, kind: str, size: int) -> None:
    frame = BinaryFrame(kind, bytes(i % 251 for i in range(size)), 4242 if version == 2 else 0)  # type: ignore[arg-type]
    assert decode_frame(version, encode_frame(version, frame)) == frame


# --- decode refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(16))
def test_v2_truncated_header(length: int) -> None:
    with pytest.raises(FrameError, match=f"v2 frame truncated: header needs 16 bytes, got {length}$"):
        decode_frame(2, encode_frame(2, BinaryFrame("audio", b"x"))[:length])


@pytest.mark.parametrize("length", range(4))
def test_v3_truncated_header(length: int) -> None:
    with pytest.raises(FrameError, match=f"v3 frame truncated: header needs 4 bytes, got {length}$"):
        decode_frame(3, b"\x00\x00\x00\x01"[:length])


def test_v2_payload_shorter_than_payload_size() -> None:
    data = struct.pack(">HHIII", 2, 0, 0, 0, 10) + b"12345"
    with pytest.raises(FrameError, match="v2 frame truncated: payload_size 10 but only 5 bytes follow the header"):
        decode_frame(2, data)


def test_v2_trailing_bytes() -> None:
    data = struct.pack(">HHIII", 2, 0, 0, 0, 3) + b"12345"
    with pytest.raises(FrameError, match="v2 frame has 2 trailing bytes after payload_size 3"):
        decode_frame(2, data)


def test_v3_payload_shorter_than_payload_size() -> None:
    with pytest.raises(FrameError, match="v3 frame truncated: payload_size 258 but only 2 bytes follow the header"):
        decode_frame(3, b"\x00\x00\x01\x02ab")


def test_v3_trailing_bytes() -> None:
    with pytest.raises(FrameError, match="v3 frame has 1 trailing bytes after payload_size 2"):
        decode_frame(3, b"\x00\x00\x00\x02abc")


def test_v3_little_endian_size_is_caught() -> None:
    # A peer writing the size little-endian (0x0200 = 512 instead of 2) must not be misparsed.
    with pytest.raises(FrameError, match="payload_size 512"):
        decode_frame(3, b"\x00\x00\x02\x00ab")


@pytest.mark.parametrize("field", [0, 1, 3, 0x0200, 0xFFFF])
def test_v2_wrong_version_field(field: int) -> None:
    data = struct.pack(">HHIII", field, 0, 0, 0, 1) + b"x"
    with pytest.raises(FrameError, match=f"v2 header carries version field {field}, expected 2$"):
        decode_frame(2, data)


@pytest.mark.parametrize("type_code", [2, 7, 0x0100, 0xFFFF])
def test_v2_unknown_type(type_code: int) -> None:
    data = struct.pack(">HHIII", 2, type_code, 0, 0, 1) + b"x"
    with pytest.raises(FrameError, match=f"v2 frame has unknown type {type_code} "):
        decode_frame(2, data)


@pytest.mark.parametrize("type_code", [2, 0x80, 0xFF])
def test_v3_unknown_type(type_code: int) -> None:
    with pytest.raises(FrameError, match=f"v3 frame has unknown type {type_code} "):
        decode_frame(3, bytes([type_code, 0, 0, 1]) + b"x")


def test_empty_payloads() -> None:
    with pytest.raises(FrameError, match="v1 frame has an empty payload"):
        decode_frame(1, b"")
    with pytest.raises(FrameError, match="v2 frame has an empty payload"):
        decode_frame(2, struct.pack(">HHIII", 2, 0, 0, 5, 0))
    with pytest.raises(FrameError, match="v3 frame has an empty payload"):
        decode_frame(3, b"\x00\x00\x00\x00")


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_oversize_audio(version: int) -> None:
    frame = BinaryFrame("audio", b"\x01" * (DEFAULT_MAX_AUDIO_PAYLOAD + 1))
    data = encode_frame(version, frame, max_payload=10_000)
    with pytest.raises(FrameError, match=f"v{version} audio payload of 4097 bytes exceeds max_payload 4096"):
        decode_frame(version, data)
    with pytest.raises(FrameError, match="exceeds max_payload 4096"):
        encode_frame(version, frame)


def test_custom_max_payload() -> None:
    data = b"\x00\x00\x00\x05abcde"
    assert decode_frame(3, data, max_payload=5).payload == b"abcde"
    with pytest.raises(FrameError, match="v3 audio payload of 5 bytes exceeds max_payload 4"):
        decode_frame(3, data, max_payload=4)


def test_json_frames_have_a_larger_default_limit() -> None:
    payload = b" " * 20_000
    assert decode_frame(2, encode_frame(2, BinaryFrame("json", payload))).payload == payload
    with pytest.raises(FrameError, match="v2 json payload of 65537 bytes exceeds max_payload 65536"):
        encode_frame(2, BinaryFrame("json", b" " * 65537))


@pytest.mark.parametrize("version", [0, 4, -1, 256, True, "2", None, 2.0])
def test_unsupported_version(version: object) -> None:
    message = f"unsupported binary protocol version {version!r} (supported: 1, 2, 3)"
    with pytest.raises(FrameError) as decode_info:
        decode_frame(version, b"\x00\x00\x00\x01x")  # type: ignore[arg-type]
    assert str(decode_info.value) == message
    with pytest.raises(FrameError) as encode_info:
        encode_frame(version, BinaryFrame("audio", b"x"))  # type: ignore[arg-type]
    assert str(encode_info.value) == message


def test_decode_refuses_text() -> None:
    with pytest.raises(FrameError, match="binary frame data must be bytes, not str"):
        decode_frame(1, '{"type":"hello"}')  # type: ignore[arg-type]


# --- encode refusals -----------------------------------------------------------------------------


def test_v1_cannot_carry_json() -> None:
    with pytest.raises(FrameError, match="v1 binary frames carry only audio"):
        encode_frame(1, BinaryFrame("json", b"{}"))


def test_encode_empty_payload() -> None:
    for version in SUPPORTED_VERSIONS:
        with pytest.raises(FrameError, match=f"v{version} frame has an empty payload"):
            encode_frame(version, BinaryFrame("audio", b""))


def test_encode_unknown_kind() -> None:
    with pytest.raises(FrameError, match="unknown frame kind 'video'"):
        encode_frame(2, BinaryFrame("video", b"x"))  # type: ignore[arg-type]


def test_encode_non_bytes_payload() -> None:
    # bytes(3) would be b"\0\0\0": an int payload must be refused, not silently zero-filled.
    with pytest.raises(FrameError, match="frame payload must be bytes, not int"):
        encode_frame(2, BinaryFrame("audio", 3))  # type: ignore[arg-type]


@pytest.mark.parametrize("timestamp", [-1, 2**32, True, 1.5])
def test_v2_timestamp_out_of_range(timestamp: object) -> None:
    with pytest.raises(FrameError, match=r"v2 timestamp_ms .* is not an integer in the u32 range"):
        encode_frame(2, BinaryFrame("audio", b"x", timestamp))  # type: ignore[arg-type]


def test_v3_payload_must_fit_u16() -> None:
    with pytest.raises(FrameError, match="v3 payload of 65536 bytes does not fit the u16 payload_size"):
        encode_frame(3, BinaryFrame("json", b"x" * 65536))
    assert len(encode_frame(3, BinaryFrame("json", b"x" * 65535))) == 65539


def test_frame_is_frozen() -> None:
    frame = BinaryFrame("audio", b"x")
    with pytest.raises(AttributeError):
        frame.payload = b"y"  # type: ignore[misc]


# --- fuzzing -------------------------------------------------------------------------------------


def _decode_or_error(version: int, data: bytes) -> BinaryFrame | None:
    try:
        frame = decode_frame(version, data)
    except FrameError:
        return None
    assert frame.kind in ("audio", "json")
    assert 0 < len(frame.payload) <= 65536
    return frame


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(SUPPORTED_VERSIONS), data=st.binary(max_size=300))
def test_fuzz_decode_arbitrary_bytes(version: int, data: bytes) -> None:
    _decode_or_error(version, data)


@settings(max_examples=300, deadline=None)
@given(
    version_field=st.sampled_from([2, 2, 2, 0, 3, 0x200]),
    type_code=st.sampled_from([0, 1, 2, 0x100]),
    reserved=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    declared=st.integers(0, 2**32 - 1) | st.integers(0, 40),
    body=st.binary(max_size=40),
)
def test_fuzz_decode_v2_headers(
    version_field: int, type_code: int, reserved: int, timestamp: int, declared: int, body: bytes
) -> None:
    # Near-valid headers reach the checks that random bytes rarely get past.
    data = struct.pack(">HHIII", version_field, type_code, reserved, timestamp, declared) + body
    frame = _decode_or_error(2, data)
    if frame is not None:
        assert frame.payload == body and frame.timestamp_ms == timestamp


@settings(max_examples=200, deadline=None)
@given(
    type_code=st.integers(0, 255),
    reserved=st.integers(0, 255),
    declared=st.integers(0, 40),
    body=st.binary(max_size=40),
)
def test_fuzz_decode_v3_headers(type_code: int, reserved: int, declared: int, body: bytes) -> None:
    frame = _decode_or_error(3, bytes([type_code, reserved]) + declared.to_bytes(2, "big") + body)
    if frame is not None:
        assert frame.payload == body and type_code in (0, 1)


@settings(max_examples=200, deadline=None)
@given(
    version=st.sampled_from(SUPPORTED_VERSIONS),
    kind=st.sampled_from(["audio", "json"]),
    payload=st.binary(min_size=1, max_size=DEFAULT_MAX_AUDIO_PAYLOAD),
    timestamp=st.integers(0, 2**32 - 1),
)
def test_fuzz_round_trip(version: int, kind: str, payload: bytes, timestamp: int) -> None:
    if version == 1:
        kind = "audio"
    frame = BinaryFrame(kind, payload, timestamp)  # type: ignore[arg-type]
    decoded = decode_frame(version, encode_frame(version, frame))
    assert decoded.kind == kind and decoded.payload == payload
    assert decoded.timestamp_ms == (timestamp if version == 2 else 0)
