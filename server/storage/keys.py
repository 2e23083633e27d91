"""S3 object keys for audio (S12): ``{device_id}/{YYYY-MM-DD}/{session_id}/{source}-{timestamp}.{ext}``.

Device and session ids come from devices, so they are made safe for keys: no ``..`` segments, no
leading ``/``, no control characters; a MAC's colons become ``-`` (colons are legal in S3 keys but
break URLs and shells). Whenever anything other than colons had to change, a short hash of the
original is appended so two different ids can never share a folder.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from server.storage.errors import InvalidInput

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
EXTENSIONS = {"opus": "opus", "wav": "wav", "mp3": "mp3", "pcm": "pcm"}
CONTENT_TYPES = {"opus": "audio/ogg; codecs=opus", "wav": "audio/wav", "mp3": "audio/mpeg", "pcm": "audio/L16"}


def safe_segment(value: str, *, kind: str = "id", max_len: int = 100) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{kind} must be a non-empty string for an object key, got {value!r}")
    colons_only = value.replace(":", "-")
    cleaned = _UNSAFE.sub("_", colons_only).strip(".")
    changed = cleaned != colons_only
    if not cleaned or set(cleaned) <= {".", "_", "-"}:
        cleaned, changed = "id", True
    if len(cleaned) > max_len:
        cleaned, changed = cleaned[:max_len], True
    if changed:
        cleaned += "~" + hashlib.sha256(value.encode()).hexdigest()[:10]
    return cleaned


def audio_object_key(device_id: str, session_id: str, source: str, created_at: datetime, file_type: str) -> str:
    if created_at.tzinfo is None:
        raise InvalidInput("created_at must be timezone-aware")
    if file_type not in EXTENSIONS:
        raise InvalidInput(f"file_type must be one of {sorted(EXTENSIONS)}, got {file_type!r}")
    if source not in ("user", "tts", "asr"):
        raise InvalidInput(f"source must be user, tts or asr, got {source!r}")
    stamp = created_at.astimezone(UTC)
    micros = int(stamp.timestamp() * 1_000_000)
    return (
        f"{safe_segment(device_id, kind='device_id')}/{stamp:%Y-%m-%d}/"
        f"{safe_segment(session_id, kind='session_id')}/{source}-{micros}.{EXTENSIONS[file_type]}"
    )


def device_prefix(device_id: str) -> str:
    return safe_segment(device_id, kind="device_id") + "/"
