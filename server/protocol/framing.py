"""Binary WebSocket frames of the xiaozhi device protocol (spec §1.3), versions 1, 2 and 3.

The version is chosen once per connection (``Protocol-Version`` header / hello ``version``), so
both functions take it explicitly instead of sniffing it from the bytes: a v1 opus packet can
start with any byte and is indistinguishable from a header.

* v1: the WebSocket message *is* one raw opus packet; JSON never travels in binary frames.
* v2: 16-byte header ``u16 version=2, u16 type, u32 reserved, u32 timestamp_ms, u32 payload_size``.
* v3: 4-byte header ``u8 type, u8 reserved, u16 payload_size``.

Every multi-byte field is big-endian: the firmware fills them with ``htons``/``htonl``.

Decoding is the server's first contact with untrusted bytes, so it raises only :class:`FrameError`
(a ``ValueError``) and never anything else, whatever the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_MAX_AUDIO_PAYLOAD",
    "DEFAULT_MAX_JSON_PAYLOAD",
    "SUPPORTED_VERSIONS",
    "BinaryFrame",
    "FrameError",
    "FrameKind",
    "decode_frame",
    "encode_frame",
]

FrameKind = Literal["audio", "json"]

SUPPORTED_VERSIONS: Final = (1, 2, 3)

# A 60 ms opus frame is ~100-300 bytes; 4 KiB leaves room for 120 ms high-bitrate packets while
# refusing anything that cannot be a single voice packet.
DEFAULT_MAX_AUDIO_PAYLOAD: Final = 4096
# JSON in a binary frame (v2/v3 type 1) is bounded like a JSON text frame (messages.MAX_MESSAGE_CHARS).
DEFAULT_MAX_JSON_PAYLOAD: Final = 65536

_V2_HEADER: Final = struct.Struct(">HHIII")  # version, type, reserved, timestamp_ms, payload_size
_V3_HEADER: Final = struct.Struct(">BBH")  # type, reserved, payload_size
assert _V2_HEADER.size == 16 and _V3_HEADER.size == 4

# Wire type codes. The spec only names 0 (opus) for v3; type 1 (JSON) is accepted there too so that
# v2 and v3 share one table (the firmware itself plays every v3 payload as audio).
_TYPE_CODES: Final[dict[str, int]] = {"audio": 0, "json": 1}
_KINDS_BY_CODE: Final[dict[int, FrameKind]] = {0: "audio", 1: "json"}

_U32_MAX: Final = 0xFFFF_FFFF
_U16_MAX: Final = 0xFFFF


class FrameError(ValueError):
    """A binary frame that cannot be encoded or decoded; the message says exactly why."""


@dataclass(frozen=True, slots=True)
class BinaryFrame:
    """One binary WebSocket message, header removed.

    ``timestamp_ms`` only exists on the wire in v2 (used for server-side AEC alignment); it is 0
    after decoding v1/v3 and silently dropped when encoding them.
    """

    kind: FrameKind
    payload: bytes
    timestamp_ms: int = 0


def _check_version(version: object) -> int:
    # bool is an int subclass; True must not pass for version 1.
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise FrameError(f"unsupported binary protocol version {version!r} (supported: 1, 2, 3)")
    return version


def _limit_for(kind: FrameKind, max_payload: int | None) -> int:
    if max_payload is not None:
        return max_payload
    return DEFAULT_MAX_AUDIO_PAYLOAD if kind == "audio" else DEFAULT_MAX_JSON_PAYLOAD


def _check_payload(version: int, kind: FrameKind, size: int, max_payload: int | None) -> None:
    if size == 0:
        raise FrameError(f"v{version} frame has an empty payload")
    limit = _limit_for(kind, max_payload)
    if size > limit:
        raise FrameError(f"v{version} {kind} payload of {size} bytes exceeds max_payload {limit}")


def encode_frame(version: int, frame: BinaryFrame, *, max_payload: int | None = None) -> bytes:
    """Serialise ``frame`` for a connection speaking binary protocol ``version``.

    ``max_payload`` defaults per kind (4096 for audio, 65536 for JSON); refusing oversize payloads
    here keeps a bad TTS packet from being sent to a device that would drop or choke on it.
    """
    version = _check_version(version)
    if frame.kind not in _TYPE_CODES:
        raise FrameError(f"unknown frame kind {frame.kind!r} (expected 'audio' or 'json')")
    if not isinstance(frame.payload, bytes | bytearray | memoryview):
        # bytes(n) of an int would silently produce n zero bytes.
        raise FrameError(f"frame payload must be bytes, not {type(frame.payload).__name__}")
    if version == 1 and frame.kind != "audio":
        # v1 has no type field: a binary message is always opus, JSON goes in text frames.
        raise FrameError("v1 binary frames carry only audio; send JSON as a text frame")
    payload = bytes(frame.payload)
    _check_payload(version, frame.kind, len(payload), max_payload)
    if version == 1:
        return payload
    type_code = _TYPE_CODES[frame.kind]
    if version == 2:
        timestamp = frame.timestamp_ms
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= _U32_MAX:
            raise FrameError(f"v2 timestamp_ms {timestamp!r} is not an integer in the u32 range")
        return _V2_HEADER.pack(2, type_code, 0, timestamp, len(payload)) + payload
    if len(payload) > _U16_MAX:
        raise FrameError(f"v3 payload of {len(payload)} bytes does not fit the u16 payload_size")
    return _V3_HEADER.pack(type_code, 0, len(payload)) + payload


def decode_frame(version: int, data: bytes, *, max_payload: int | None = None) -> BinaryFrame:
    """Parse one binary WebSocket message received on a ``version`` connection.

    Reserved header fields are ignored rather than required to be 0 (the firmware never reads
    them either). The payload must fill the message exactly: both a short message and trailing
    bytes mean the peer and we disagree on the framing, and guessing would feed garbage to opus.
    """
    version = _check_version(version)
    if not isinstance(data, bytes | bytearray | memoryview):
        # A str here means a text frame was routed to the binary path.
        raise FrameError(f"binary frame data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if version == 1:
        _check_payload(1, "audio", len(data), max_payload)
        return BinaryFrame("audio", data)
    if version == 2:
        header = _V2_HEADER
        if len(data) < header.size:
            raise FrameError(f"v2 frame truncated: header needs {header.size} bytes, got {len(data)}")
        field_version, type_code, _reserved, timestamp_ms, payload_size = header.unpack_from(data)
        if field_version != 2:
            raise FrameError(f"v2 header carries version field {field_version}, expected 2")
    else:
        header = _V3_HEADER
        if len(data) < header.size:
            raise FrameError(f"v3 frame truncated: header needs {header.size} bytes, got {len(data)}")
        type_code, _reserved, payload_size = header.unpack_from(data)
        timestamp_ms = 0
    kind = _KINDS_BY_CODE.get(type_code)
    if kind is None:
        raise FrameError(f"v{version} frame has unknown type {type_code} (expected 0=opus or 1=json)")
    available = len(data) - header.size
    if payload_size > available:
        raise FrameError(
            f"v{version} frame truncated: payload_size {payload_size} but only {available} bytes follow the header"
        )
    if payload_size < available:
        raise FrameError(
            f"v{version} frame has {available - payload_size} trailing bytes after payload_size {payload_size}"
        )
    _check_payload(version, kind, payload_size, max_payload)
    return BinaryFrame(kind, data[header.size :], timestamp_ms)
