"""Opus packet inspection from the TOC byte (RFC 6716 section 3.1).

Only the packet framing is interpreted: nothing here decodes audio.  This is what lets the server
know how long a device's (or the TTS engine's) opus frames are without a decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_PACKET_SAMPLES_48K", "InvalidOpusPacket", "packet_samples", "packets_duration_ms"]

# Frame size in 48 kHz samples for each of the 32 TOC configurations (RFC 6716 table 2):
#   0..11  SILK-only (NB, MB, WB):  10, 20, 40, 60 ms
#   12..15 Hybrid (SWB, FB):        10, 20 ms
#   16..31 CELT-only (NB, WB, SWB, FB): 2.5, 5, 10, 20 ms
_FRAME_SAMPLES_48K: tuple[int, ...] = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4

# A packet may carry at most 120 ms of audio (RFC 6716 section 3.2.5, R5).
MAX_PACKET_SAMPLES_48K = 5760
_MAX_FRAMES = 48


class InvalidOpusPacket(ValueError):
    """The bytes are not a well-formed Opus packet (as far as the TOC framing tells)."""


def _samples_48k(packet: bytes) -> int:
    if not packet:
        raise InvalidOpusPacket("empty opus packet (no TOC byte)")
    toc = packet[0]
    frame = _FRAME_SAMPLES_48K[toc >> 3]
    code = toc & 0x03
    if code == 0:
        return frame
    if code in (1, 2):
        return 2 * frame
    # Code 3: arbitrary number of frames, count in the low 6 bits of the second byte.
    if len(packet) < 2:
        raise InvalidOpusPacket(f"code-3 opus packet (TOC 0x{toc:02x}) is missing its frame count byte")
    count = packet[1] & 0x3F
    if count == 0:
        raise InvalidOpusPacket(f"code-3 opus packet (TOC 0x{toc:02x}) declares 0 frames")
    total = count * frame
    if total > MAX_PACKET_SAMPLES_48K:
        raise InvalidOpusPacket(
            f"opus packet (TOC 0x{toc:02x}) declares {count} frames of {frame / 48:g} ms = "
            f"{total / 48:g} ms, more than the 120 ms allowed"
        )
    return total


def packet_samples(packet: bytes, sample_rate: int = 48000) -> int:
    """Number of samples per channel, at ``sample_rate``, that ``packet`` decodes to.

    Raises :class:`InvalidOpusPacket` for an empty packet, a code-3 packet without its
    frame-count byte, a frame count of 0, or more than 120 ms of audio.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    samples = _samples_48k(packet)
    if sample_rate == 48000:
        return samples
    return samples * sample_rate // 48000


def packets_duration_ms(packets: Sequence[bytes]) -> int:
    """Total duration of ``packets`` in milliseconds, rounded to the nearest ms (half up)."""
    total = 0
    for packet in packets:
        total += _samples_48k(packet)
    return (total + 24) // 48
