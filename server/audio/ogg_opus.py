"""Wrap opus packets, as sent by a device or a TTS engine, into a standard Ogg Opus file.

The packets are muxed as they are (no decode / re-encode), so the file holds exactly the bytes
the device sent.  Muxing goes through PyAV's (FFmpeg's) Ogg muxer.

PyAV notes (PyAV 18):

* ``add_stream("libopus")`` creates an *encoder* context, and PyAV opens it when the header is
  written.  Opening the libopus encoder replaces ``codec_context.extradata`` with its own
  OpusHead (input sample rate 48000), silently discarding one set beforehand.  We therefore
  open the context ourselves first and set our OpusHead afterwards; PyAV then copies it into
  the stream parameters and the muxer writes it verbatim.  No frame is ever encoded.
* ``add_mux_stream("opus")`` (no codec context) cannot carry extradata, and the Ogg muxer
  refuses an Opus stream without an OpusHead.
* Setting ``Packet.stream`` does not set ``Packet.time_base``; it must be set explicitly or
  the timestamps are not rebased.
* FFmpeg's Ogg muxer writes granule = pts + duration + pre-skip, following FFmpeg's convention
  that an encoder with delay emits its first packet at pts = -pre-skip.  The device's packets
  already contain the encoder delay (RFC 7845: the last granule is the total decoded sample
  count, pre-skip included), so the first packet is muxed at pts = -pre-skip.  Starting at 0
  instead shifts every granule by 312; libsndfile then rejects any clip that fits in a single
  Ogg page (up to ~1 s) as "malformed", since its end granule lies past its audio.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

from server.audio.opus_packets import InvalidOpusPacket, packet_samples

__all__ = ["OPUS_PRE_SKIP", "InvalidOpusPacket", "OggOpus", "build_ogg_opus", "read_ogg_opus_packets"]

# Pre-skip in 48 kHz samples.  libopus' lookahead is 6.5 ms (312 samples at 48 kHz) for every
# input rate in the VOIP/AUDIO applications, which is what the devices and TTS engines use.
OPUS_PRE_SKIP = 312

_TIME_BASE = Fraction(1, 48000)
_LAYOUTS = {1: "mono", 2: "stereo"}


@dataclass(frozen=True, slots=True)
class OggOpus:
    """An Ogg Opus file.  ``duration_ms`` is the sum of the packet durations (pre-skip included)."""

    data: bytes
    duration_ms: int
    packet_count: int


def _opus_head(channels: int, input_sample_rate: int) -> bytes:
    # RFC 7845 section 5.1: magic, version 1, channel count, pre-skip (u16 LE),
    # input sample rate (u32 LE), output gain (Q7.8 i16 LE), channel mapping family 0.
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, OPUS_PRE_SKIP, input_sample_rate, 0, 0)


def build_ogg_opus(packets: Sequence[bytes], *, input_sample_rate: int = 16000, channels: int = 1) -> OggOpus:
    """Mux ``packets`` (one opus packet each, in order) into an Ogg Opus file without re-encoding.

    ``input_sample_rate`` is recorded in the OpusHead (players such as libsndfile decode at that
    rate; FFmpeg decodes at 48 kHz).  Every packet is validated before anything is muxed.

    Raises ``ValueError("no audio packets")`` for an empty sequence and
    :class:`InvalidOpusPacket` if any packet's TOC framing is invalid.
    """
    if not packets:
        raise ValueError("no audio packets")
    if channels not in _LAYOUTS:
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if not 0 < input_sample_rate <= 0xFFFFFFFF:
        raise ValueError(f"input_sample_rate out of range: {input_sample_rate}")

    durations: list[int] = []
    for index, packet in enumerate(packets):
        try:
            durations.append(packet_samples(packet))
        except InvalidOpusPacket as exc:
            raise InvalidOpusPacket(f"packet {index}: {exc}") from exc
    total_samples = sum(durations)

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        ctx = stream.codec_context
        ctx.layout = _LAYOUTS[channels]
        stream.time_base = _TIME_BASE
        # See module docstring: open first, otherwise the encoder overwrites our OpusHead.
        ctx.open()
        ctx.extradata = _opus_head(channels, input_sample_rate)

        pts = -OPUS_PRE_SKIP  # see module docstring: makes the granules start at 0
        for packet, duration in zip(packets, durations, strict=True):
            av_packet = av.Packet(packet)
            av_packet.stream = stream
            av_packet.time_base = _TIME_BASE
            av_packet.pts = pts
            av_packet.dts = pts
            av_packet.duration = duration
            container.mux_one(av_packet)
            pts += duration

    return OggOpus(data=buffer.getvalue(), duration_ms=(total_samples + 24) // 48, packet_count=len(durations))


def read_ogg_opus_packets(data: bytes) -> tuple[list[bytes], int, int]:
    """Demux an Ogg Opus file into ``(packets, input_sample_rate, channels)``.

    ``input_sample_rate`` and ``channels`` come from the OpusHead.  Raises ``ValueError`` if
    ``data`` is not an Ogg Opus file.
    """
    try:
        container = av.open(io.BytesIO(data), mode="r", format="ogg")
    except av.FFmpegError as exc:
        raise ValueError(f"not an Ogg Opus file: cannot open as Ogg ({exc})") from exc
    try:
        audio = container.streams.audio
        if not audio:
            raise ValueError("not an Ogg Opus file: no audio stream")
        stream = audio[0]
        if stream.codec_context.name != "opus":
            raise ValueError(f"not an Ogg Opus file: audio codec is {stream.codec_context.name!r}")
        head = stream.codec_context.extradata or b""
        if len(head) < 19 or not head.startswith(b"OpusHead"):
            raise ValueError("not an Ogg Opus file: missing or short OpusHead")
        channels = head[9]
        (input_sample_rate,) = struct.unpack_from("<I", head, 12)
        try:
            packets = [bytes(p) for p in container.demux(stream) if p.size]
        except av.FFmpegError as exc:
            raise ValueError(f"corrupt Ogg Opus file: {exc}") from exc
    finally:
        container.close()
    return packets, input_sample_rate, channels
