"""Pure parts of the sound path: picking a device from PortAudio's list, streaming resampling, the
energy gate that marks the end of the user's speech, subtitles, fleet identities."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.audio_devices import AudioDevice, describe_devices, pick_device
from simulator.errors import SimulatorError
from simulator.events import Alert, Sentence, StateChanged, SttText, ToolCalled
from simulator.identity import DeviceIdentity
from simulator.load import derive_identity
from simulator.microphone import SpeechEndDetector, StreamResampler
from simulator.terminal import describe

DEVICES = [
    AudioDevice(0, "HDA Intel PCH: ALC257 Analog (hw:0,0)", "ALSA", 2, 2, 48000.0),
    AudioDevice(1, "USB Headset: Audio (hw:1,0)", "ALSA", 1, 0, 44100.0),
    AudioDevice(2, "pulse", "ALSA", 32, 32, 44100.0),
    AudioDevice(3, "default", "ALSA", 32, 32, 44100.0, default_input=True, default_output=True),
    AudioDevice(4, "HDMI 0 (hw:0,3)", "ALSA", 0, 8, 44100.0),
]


def test_pick_by_default_index_exact_or_unique_part_of_the_name() -> None:
    assert pick_device(None, "input", DEVICES).index == 3
    assert pick_device("1", "input", DEVICES).name.startswith("USB")
    assert pick_device("PULSE", "output", DEVICES).index == 2
    assert pick_device("headset", "input", DEVICES).index == 1
    assert pick_device("hdmi", "output", DEVICES).index == 4
    no_default = [d for d in DEVICES if d.index != 3]
    assert pick_device(None, "output", no_default).index == 0, "no default: the first that can"


def test_pick_errors_name_what_exists() -> None:
    with pytest.raises(SimulatorError, match=r"no audio input device named 'hdmi'; inputs: 0 'HDA Intel"):
        pick_device("hdmi", "input", DEVICES)
    with pytest.raises(SimulatorError, match=r"audio device 4 'HDMI 0 \(hw:0,3\)' \(ALSA\) has no input channels"):
        pick_device(4, "input", DEVICES)
    with pytest.raises(SimulatorError, match=r"'hw' is ambiguous: 0 .*, 1 .*; give its index"):
        pick_device("hw", "input", DEVICES)
    with pytest.raises(SimulatorError, match="no audio device with index 9"):
        pick_device("9", "output", DEVICES)
    with pytest.raises(SimulatorError, match=r"^no audio input device: PortAudio sees no sound card"):
        pick_device(None, "input", [])


def test_device_listing_marks_the_defaults() -> None:
    lines = describe_devices(DEVICES)
    assert lines[3].startswith("><   3 default")
    assert lines[1].startswith("     1 USB Headset")
    assert "no sound devices" in describe_devices([])[0]


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (44100, 16000), (16000, 24000), (24000, 44100)])
def test_stream_resampling_keeps_a_tone_clean_across_blocks(src: int, dst: int) -> None:
    tone = 8000 * np.sin(2 * np.pi * 440 * np.arange(src * 2) / src)
    resampler = StreamResampler(src, dst)
    out = np.concatenate([resampler.process(tone[i : i + 1234]) for i in range(0, len(tone), 1234)])
    assert abs(len(out) - 2 * dst) <= 40, "the right number of samples, within the filter's delay"
    steady = out[dst // 10 : -dst // 10]
    # A 440 Hz sine fitted to the output explains all of it: no seams between blocks, no level change.
    t = np.arange(len(steady)) / dst
    basis = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 440 * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, steady, rcond=None)
    residual = steady - basis @ coef
    assert abs(np.hypot(*coef) - 8000) < 80
    assert np.sqrt(np.mean(residual**2)) < 40, "less than -46 dB of distortion"


def frame(level: float) -> np.ndarray:
    return (level * np.sin(np.arange(960) / 3)).astype(np.int16)


def test_end_of_speech_is_the_last_loud_frame_after_a_pause() -> None:
    gate = SpeechEndDetector(threshold_rms=400, min_speech_ms=180, hangover_ms=300)
    t = 0.0
    ended = []
    for level in [0] * 3 + [3000] * 10 + [0] * 4 + [3000] * 2 + [0] * 6:
        t += 0.06
        result = gate.feed(frame(level), t)
        if result is not None:
            ended.append(round(result, 2))
    # A 240 ms pause inside the speech does not end it; 300 ms of quiet after its last loud frame does.
    assert ended == [1.14]
    assert not gate.speaking
    blip = SpeechEndDetector(threshold_rms=400, min_speech_ms=180, hangover_ms=300)
    assert [blip.feed(frame(level), 0.0) for level in [3000, 3000] + [0] * 6] == [None] * 8, "120 ms is no speech"


def test_subtitles() -> None:
    assert describe(SttText("what time is it")) == "you: what time is it"
    assert describe(Sentence("It's noon.")) == "xiaozhi: It's noon."
    assert describe(Sentence("It's noon.", "end")) is None
    tool = describe(ToolCalled("self.audio_speaker.set_volume", {"volume": 30}, "true", False))
    assert tool == '  tool self.audio_speaker.set_volume({"volume":30}) → true'
    assert describe(Alert("error", "LLM down", "sad")) == "alert [error] LLM down (sad)"
    assert describe(StateChanged("idle", "listening")) is None
    assert describe(StateChanged("idle", "listening"), verbose=True) == "  (idle → listening)"


def test_fleet_identities_are_stable_distinct_and_locally_administered() -> None:
    base = DeviceIdentity("02:00:00:00:00:01", "5b0f3a52-0000-4000-8000-00000000abcd")
    fleet = [derive_identity(base, i) for i in range(500)]
    assert fleet[7] == derive_identity(base, 7)
    assert len({d.device_id for d in fleet}) == 500 and len({d.client_id for d in fleet}) == 500
    assert all(int(d.device_id[:2], 16) & 0x03 == 0x02 for d in fleet)
