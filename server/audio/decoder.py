"""Opus packet → int16 PCM, one decoder per device connection (libopus keeps state between packets)."""

from __future__ import annotations

import ctypes

import numpy as np
import opuslib_next
from opuslib_next.api import c_int16_pointer
from opuslib_next.api import decoder as opus_api

from server.audio.opus_packets import InvalidOpusPacket, packet_samples

__all__ = ["InvalidOpusPacket", "OpusDecoder"]

_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class OpusDecoder:
    """Decodes a device's opus packets, in order, to int16 PCM at ``sample_rate``.

    ``decode`` returns a 1-D array for mono and ``(samples, channels)`` for stereo.  libopus writes
    straight into the numpy buffer (no bytes round trip).  Not thread-safe: one decoder per stream.
    """

    def __init__(self, sample_rate: int = 16000, channels: int = 1) -> None:
        if sample_rate not in _OPUS_RATES:
            raise ValueError(f"opus cannot decode at {sample_rate} Hz (one of {_OPUS_RATES})")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._decoder = opuslib_next.Decoder(sample_rate, channels)
        self._max_samples = sample_rate * 120 // 1000  # the longest packet opus allows
        self._last_samples = sample_rate * 60 // 1000  # what a lost packet is assumed to cover

    def decode(self, packet: bytes) -> np.ndarray:
        """Decode one packet.  Raises :class:`InvalidOpusPacket` if it is empty or libopus rejects it."""
        samples = packet_samples(packet, self.sample_rate)  # raises InvalidOpusPacket on bad framing
        pcm = self._run(bytes(packet), len(packet), self._max_samples)
        if samples:
            self._last_samples = samples
        return pcm

    def decode_packet_loss(self, samples: int | None = None) -> np.ndarray:
        """Conceal one missing packet (libopus PLC).

        ``samples`` per channel defaults to the duration of the last good packet (60 ms before any),
        and must be a multiple of 2.5 ms.
        """
        n = self._last_samples if samples is None else samples
        if n <= 0 or n > self._max_samples or (n * 400) % self.sample_rate:
            raise ValueError(f"packet loss concealment needs a multiple of 2.5 ms up to 120 ms, got {n} samples")
        return self._run(None, 0, n)

    def reset(self) -> None:
        """Forget the decoder state (e.g. a new utterance after the device reconnects)."""
        self._decoder.reset_state()

    def _run(self, data: bytes | None, length: int, frame_size: int) -> np.ndarray:
        out = np.empty(frame_size * self.channels, dtype=np.int16)
        result = opus_api.libopus_decode(
            self._decoder.decoder_state,
            data,
            length,
            out.ctypes.data_as(c_int16_pointer),
            ctypes.c_int(frame_size),
            0,
        )
        if result < 0:
            message = str(opuslib_next.OpusError(result))
            raise InvalidOpusPacket(f"libopus rejected the packet ({length} bytes): {message}")
        out = out[: result * self.channels]
        return out if self.channels == 1 else out.reshape(-1, self.channels)
