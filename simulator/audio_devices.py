"""The sound devices PortAudio (through ``sounddevice``) can see, and picking one by index or name.

``sounddevice`` is imported on first use only: runs with file or text input never need PortAudio, and
a machine without the library (apt ``libportaudio2``) or without any sound device gets a one-line
:class:`~simulator.errors.SimulatorError` saying so instead of an import traceback.  PortAudio takes
its device list when it is initialised, i.e. at that first import.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from simulator.errors import SimulatorError

__all__ = ["AudioDevice", "describe_devices", "list_devices", "pick_device", "sounddevice_module"]

Direction = Literal["input", "output"]

_module: ModuleType | None = None


def sounddevice_module() -> ModuleType:
    """The ``sounddevice`` module, or a SimulatorError naming what is missing."""
    global _module
    if _module is None:
        try:
            import sounddevice
        except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
            raise SimulatorError(
                f"sound is unavailable: {' '.join(str(exc).split())} (install the libportaudio2 package)"
            ) from None
        _module = sounddevice
    return _module


@dataclass(frozen=True, slots=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    inputs: int  # max input channels
    outputs: int  # max output channels
    default_rate: float
    default_input: bool = False
    default_output: bool = False

    def channels(self, direction: Direction) -> int:
        return self.inputs if direction == "input" else self.outputs

    def __str__(self) -> str:
        return f"{self.index} {self.name!r} ({self.host_api})"


def list_devices() -> list[AudioDevice]:
    sd = sounddevice_module()
    try:
        raw: Any = sd.query_devices()
        apis = [api["name"] for api in sd.query_hostapis()]
        default_in, default_out = sd.default.device
    except sd.PortAudioError as exc:
        raise SimulatorError(f"cannot list sound devices: {exc}") from None
    return [
        AudioDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            host_api=apis[d["hostapi"]] if 0 <= d["hostapi"] < len(apis) else "?",
            inputs=int(d["max_input_channels"]),
            outputs=int(d["max_output_channels"]),
            default_rate=float(d["default_samplerate"]),
            default_input=int(d["index"]) == default_in,
            default_output=int(d["index"]) == default_out,
        )
        for d in raw
    ]


def describe_devices(devices: list[AudioDevice]) -> list[str]:
    """``xiaozhi sim --list-devices``: one line per device, defaults marked with ``>`` (in) and ``<`` (out)."""
    if not devices:
        return ["no sound devices (PortAudio sees no sound card and no sound server such as PulseAudio)"]
    lines = []
    for d in devices:
        mark = (">" if d.default_input else " ") + ("<" if d.default_output else " ")
        lines.append(
            f"{mark} {d.index:>3} {d.name}  ({d.host_api}; {d.inputs} in, {d.outputs} out, {d.default_rate:g} Hz)"
        )
    lines.append("> default input, < default output; pick one with --input-device/--output-device INDEX or NAME")
    return lines


def pick_device(spec: str | int | None, direction: Direction, devices: list[AudioDevice] | None = None) -> AudioDevice:
    """The device ``spec`` names (an index, an exact name, or a unique part of a name, any case), or with
    ``spec`` None the default one for ``direction``; SimulatorError when there is no such device."""
    devices = list_devices() if devices is None else devices
    usable = [d for d in devices if d.channels(direction) > 0]
    if not usable:
        other = "--file or --text" if direction == "input" else "--record FILE.wav or --no-speaker"
        raise SimulatorError(
            f"no audio {direction} device: PortAudio sees no sound card and no sound server (use {other})"
        )
    available = ", ".join(f"{d.index} {d.name!r}" for d in usable)
    if spec is None or spec == "":
        for d in usable:
            if d.default_input if direction == "input" else d.default_output:
                return d
        return usable[0]
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        for d in devices:
            if d.index == index:
                if d.channels(direction) == 0:
                    raise SimulatorError(f"audio device {d} has no {direction} channels; {direction}s: {available}")
                return d
        raise SimulatorError(f"no audio device with index {index}; {direction}s: {available}")
    exact = [d for d in usable if d.name.casefold() == text.casefold()]
    if exact:
        return exact[0]
    partial = [d for d in usable if text.casefold() in d.name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        names = ", ".join(f"{d.index} {d.name!r}" for d in partial)
        raise SimulatorError(f"audio {direction} device {text!r} is ambiguous: {names}; give its index")
    raise SimulatorError(f"no audio {direction} device named {text!r}; {direction}s: {available}")
