"""Per-connection collection of opus packets, one clip per turn.

The device's frames are accumulated while the user speaks and taken (``take_user``) at the end
of speech; the TTS frames are accumulated while the assistant speaks and taken (``take_tts``)
when TTS ends.  Everything here is called on the real-time path, so nothing raises on bad input
and each packet costs O(1): the TOC byte is read once and a running sample count is kept.

Not thread-safe: one collector belongs to one connection's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.audio.opus_packets import InvalidOpusPacket, packet_samples

__all__ = ["AudioCollector", "CollectedAudio"]

Source = Literal["user", "tts"]


@dataclass(frozen=True, slots=True)
class CollectedAudio:
    """One turn's opus packets, ready for :func:`server.audio.ogg_opus.build_ogg_opus`.

    ``sample_rate`` is the source's encoder input rate (for the OpusHead), ``duration_ms`` the sum
    of the packet durations, ``truncated`` whether packets were dropped at ``max_turn_ms``.
    """

    packets: tuple[bytes, ...]
    sample_rate: int
    channels: int
    duration_ms: int
    truncated: bool
    source: Source


class _Turn:
    __slots__ = ("packets", "samples", "truncated")

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.samples = 0  # 48 kHz samples
        self.truncated = False


def _ms(samples_48k: int) -> int:
    return (samples_48k + 24) // 48


class AudioCollector:
    """Keeps the current user turn and the current TTS turn of one connection."""

    def __init__(
        self,
        *,
        max_turn_ms: int = 300_000,
        user_sample_rate: int = 16000,
        tts_sample_rate: int = 24000,
        channels: int = 1,
        enabled_user: bool = True,
        enabled_tts: bool = True,
    ) -> None:
        if max_turn_ms <= 0:
            raise ValueError(f"max_turn_ms must be positive, got {max_turn_ms}")
        if user_sample_rate <= 0 or tts_sample_rate <= 0:
            raise ValueError("sample rates must be positive")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.max_turn_ms = max_turn_ms
        self.user_sample_rate = user_sample_rate
        self.tts_sample_rate = tts_sample_rate
        self.channels = channels
        self.enabled_user = enabled_user
        self.enabled_tts = enabled_tts
        self._max_samples = max_turn_ms * 48
        self._user = _Turn()
        self._tts = _Turn()
        self._invalid_packets = 0

    # -- adding (real-time path: never raises on bad packets) -------------------------------

    def add_user(self, packet: bytes) -> None:
        """Append one opus packet from the device to the current user turn."""
        if self.enabled_user:
            self._add(self._user, packet)

    def add_tts(self, packet: bytes) -> None:
        """Append one TTS opus packet to the current TTS turn."""
        if self.enabled_tts:
            self._add(self._tts, packet)

    def _add(self, turn: _Turn, packet: bytes) -> None:
        try:
            samples = packet_samples(packet)
        except (InvalidOpusPacket, TypeError):
            self._invalid_packets += 1
            return
        if turn.samples + samples > self._max_samples:
            turn.truncated = True
            return
        turn.packets.append(bytes(packet))
        turn.samples += samples

    # -- taking -----------------------------------------------------------------------------

    def take_user(self) -> CollectedAudio | None:
        """Return the current user turn (None if empty or disabled) and start a new one."""
        turn, self._user = self._user, _Turn()
        if not self.enabled_user:
            return None
        return self._collected(turn, "user", self.user_sample_rate)

    def take_tts(self) -> CollectedAudio | None:
        """Return the current TTS turn (None if empty or disabled) and start a new one."""
        turn, self._tts = self._tts, _Turn()
        if not self.enabled_tts:
            return None
        return self._collected(turn, "tts", self.tts_sample_rate)

    def _collected(self, turn: _Turn, source: Source, sample_rate: int) -> CollectedAudio | None:
        if not turn.packets:
            return None
        return CollectedAudio(
            packets=tuple(turn.packets),
            sample_rate=sample_rate,
            channels=self.channels,
            duration_ms=_ms(turn.samples),
            truncated=turn.truncated,
            source=source,
        )

    # -- discarding -------------------------------------------------------------------------

    def discard_user(self) -> None:
        """Drop the current user turn (e.g. the speech was aborted or rejected)."""
        self._user = _Turn()

    def discard_tts(self) -> None:
        """Drop the current TTS turn."""
        self._tts = _Turn()

    def clear(self) -> None:
        """Drop both current turns.  ``invalid_packets`` is a connection-lifetime counter and is kept."""
        self._user = _Turn()
        self._tts = _Turn()

    # -- state ------------------------------------------------------------------------------

    @property
    def invalid_packets(self) -> int:
        """Packets rejected by :func:`packet_samples` since the collector was created."""
        return self._invalid_packets

    @property
    def user_duration_ms(self) -> int:
        return _ms(self._user.samples)

    @property
    def tts_duration_ms(self) -> int:
        return _ms(self._tts.samples)
