"""The uplink worker process: real opus packets decoded and run through Silero VAD in a real child process."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from server.audio.decoder import OpusDecoder
from server.audio.opus_packets import packet_samples
from server.pipeline import uplink
from server.pipeline.uplink import SEGMENT_PAD_S, StreamReport, UplinkAnalyzer, decode_packets
from server.pipeline.vad import SileroModel, VadBatcher, VadConfig, VadStream
from tests.support.speech import RATE, silence, spoken_pcm16k, to_opus_packets
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def packets() -> list[bytes]:
    speech = spoken_pcm16k("Please turn the light on in the kitchen.")
    return to_opus_packets(np.concatenate([silence(600), speech, silence(1200)]))


async def feed(analyzer: UplinkAnalyzer, streams: list, packets: list[bytes], per_run: int = 1) -> dict:
    got: dict[int, list[StreamReport]] = {s.id: [] for s in streams}
    for lo in range(0, len(packets), per_run):
        for stream in streams:
            for packet in packets[lo : lo + per_run]:
                stream.push(packet, packet_samples(packet, RATE))
        for stream_id, report in (await analyzer.run()).items():
            got[stream_id].append(report)
    return got


async def test_worker_finds_what_vad_finds_on_the_decoded_audio(packets: list[bytes]) -> None:
    decoder = OpusDecoder(RATE)
    expected = VadStream(SileroModel.shared()).feed(np.concatenate([decoder.decode(p) for p in packets]))
    assert [e.kind for e in expected] == ["speech_start", "speech_end"]

    analyzer = UplinkAnalyzer()
    await analyzer.start()
    try:
        a, b = analyzer.open(), analyzer.open()
        got = await feed(analyzer, [a, b], packets, per_run=2)
    finally:
        await analyzer.stop()
    for stream in (a, b):
        assert [e for r in got[stream.id] for e in r.events] == expected
        assert stream.evaluated_samples == len(packets) * 960 // 512 * 512
        levels = [r.level for r in got[stream.id] if r.level is not None]
        assert max(levels) > 500 and min(levels) < 50  # speech is loud, the silence around it is not
    assert analyzer.pid is None


async def test_rejected_packets_count_as_silence_and_keep_offsets(packets: list[bytes]) -> None:
    garbage = bytes([0x7A, 0xFF, 1, 2, 3])  # TOC: two 20 ms frames; a body libopus rejects
    assert packet_samples(garbage, RATE) == 640
    analyzer = UplinkAnalyzer()
    try:
        stream = analyzer.open()
        got = await feed(analyzer, [stream], [garbage, garbage, *packets])
    finally:
        await analyzer.stop()
    reports = got[stream.id]
    assert sum(r.bad_packets for r in reports) == 2
    start = next(e for r in reports for e in r.events if e.kind == "speech_start")
    # the speech begins ~600 ms into the packets, which now start 80 ms later
    assert 600 + 80 - 200 < start.start_ms < 600 + 80 + 400


async def test_reset_restarts_the_offsets(packets: list[bytes]) -> None:
    analyzer = UplinkAnalyzer(VadConfig(min_silence_ms=300))
    try:
        stream = analyzer.open()
        await feed(analyzer, [stream], packets[:10])
        assert stream.evaluated_samples > 0
        stream.reset()
        assert stream.reset_pending
        stream.push(packets[0], 960)
        await analyzer.run()
        assert not stream.reset_pending
        assert stream.evaluated_samples == 512  # one 960-sample packet since the reset: one whole window
    finally:
        await analyzer.stop()


async def test_closed_streams_take_no_audio_and_are_forgotten(packets: list[bytes]) -> None:
    analyzer = UplinkAnalyzer()
    try:
        kept, gone = analyzer.open(), analyzer.open()
        gone.push(packets[0], 960)
        analyzer.close(gone)
        with pytest.raises(RuntimeError, match="closed"):
            gone.push(packets[0], 960)
        kept.push(packets[0], 960)
        assert list(await analyzer.run()) == [kept.id]
        assert len(analyzer) == 1
    finally:
        await analyzer.stop()


async def test_a_killed_worker_is_replaced_and_every_stream_starts_over(packets: list[bytes]) -> None:
    analyzer = UplinkAnalyzer()
    await analyzer.start()
    try:
        a, b = analyzer.open(), analyzer.open()
        await feed(analyzer, [a, b], packets[:5])
        pid = analyzer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: _gone(pid), timeout=10)
        a.push(packets[5], 960)
        reports = await analyzer.run()
        assert {i: r.restarted for i, r in reports.items()} == {a.id: True, b.id: True}
        assert analyzer.restarts == 1 and a.evaluated_samples == 0
        # The new worker works: a whole utterance from offset 0 gives its events again.
        got = await feed(analyzer, [a], packets)
        assert [e.kind for r in got[a.id] for e in r.events] == ["speech_start", "speech_end"]
        assert analyzer.pid not in (None, pid)
    finally:
        await analyzer.stop()


def test_decode_packets_gives_the_segment_pcm(packets: list[bytes]) -> None:
    pcm = decode_packets([*packets[:3], b"", *packets[3:6]])  # a bad packet is skipped
    assert pcm.dtype == np.int16 and len(pcm) == 6 * 960


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


async def test_a_hung_worker_is_replaced(packets: list[bytes]) -> None:
    analyzer = UplinkAnalyzer(reply_timeout_s=1.0)
    await analyzer.start()
    try:
        stream = analyzer.open()
        await feed(analyzer, [stream], packets[:3])
        pid = analyzer.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
        stream.push(packets[3], 960)
        reports = await analyzer.run()
        assert reports[stream.id].restarted and analyzer.restarts == 1
        got = await feed(analyzer, [stream], packets)
        assert [e.kind for r in got[stream.id] for e in r.events] == ["speech_start", "speech_end"]
        assert _gone(pid), "the hung worker was killed"
    finally:
        await analyzer.stop()


async def test_each_end_of_speech_brings_the_segment_pcm_decoded_from_the_whole_stream(packets: list[bytes]) -> None:
    decoder = OpusDecoder(RATE)
    stream_pcm = np.concatenate([decoder.decode(p) for p in packets])
    analyzer = UplinkAnalyzer()
    try:
        stream = analyzer.open()
        reports = (await feed(analyzer, [stream], packets, per_run=3))[stream.id]
    finally:
        await analyzer.stop()
    ends = [(r, e) for r in reports for e in r.events if e.kind == "speech_end"]
    assert len(ends) == 1
    assert all(len(r.segments) == sum(e.kind == "speech_end" for e in r.events) for r in reports)
    report, end = ends[0]
    assert end.end is not None
    pad = int(SEGMENT_PAD_S * RATE)
    expected = stream_pcm[end.start - pad : end.end + pad]
    assert np.array_equal(report.segments[0], expected)  # the very samples, not a re-decode from a cold decoder


def test_the_worker_keeps_only_recent_audio_between_segments() -> None:
    """Thirty seconds of silence leave well under a second of decoded audio in the worker (memory stays flat)."""
    quiet = to_opus_packets(silence(30_000))
    batcher, streams = VadBatcher(SileroModel.shared()), {}
    uplink._handle(([(1, VadConfig())], [], []), batcher, streams)
    for lo in range(0, len(quiet), 5):
        uplink._handle(([], [], [(1, False, [(p, 960) for p in quiet[lo : lo + 5]])]), batcher, streams)
    kept = sum(len(pcm) for _, pcm in streams[1].chunks)
    assert 0 < kept < RATE
    uplink._handle(([], [], [(1, True, [])]), batcher, streams)  # a reset forgets it all
    assert not streams[1].chunks and streams[1].decoded == 0


async def test_two_workers_share_the_streams_and_a_lost_one_restarts_only_its_own(packets: list[bytes]) -> None:
    analyzer = UplinkAnalyzer(workers=2)
    await analyzer.start()
    try:
        streams = [analyzer.open() for _ in range(4)]
        await feed(analyzer, streams, packets[:5])
        pids = analyzer.pids
        assert None not in pids and len(set(pids)) == 2
        os.kill(pids[1], signal.SIGKILL)
        await wait_until(lambda: _gone(pids[1]), timeout=10)
        for stream in streams:
            stream.push(packets[5], 960)
        reports = await analyzer.run()
        restarted = {i for i, r in reports.items() if r.restarted}
        assert len(restarted) == 2, "the streams were spread evenly, and only the lost worker's start over"
        for stream in streams:
            assert stream.evaluated_samples == (0 if stream.id in restarted else 6 * 960 // 512 * 512)
        got = await feed(analyzer, streams, packets)
        for stream in streams:  # every stream works again, on either worker
            assert "speech_end" in [e.kind for r in got[stream.id] for e in r.events]
        assert analyzer.pids[0] == pids[0] and analyzer.pids[1] not in (None, pids[1])
    finally:
        await analyzer.stop()
    assert analyzer.pids == [None, None]
