"""Scenarios: a YAML file of turns a simulated device plays unattended, each with what the reply must
contain, for demos and CI (``xiaozhi sim SERVER --scenario demo.yaml``; exit 0 only if every turn passed).

.. code-block:: yaml

    server: ws://127.0.0.1:8000/xiaozhi/v1/   # optional: the command line's SERVER wins
    protocol_version: 1                       # optional: 1, 2 or 3
    mode: auto                                # listen mode of spoken turns: auto, manual or realtime
    timeout: 60                               # seconds to wait for each reply
    turns:
      - say: hello                            # typed text (listen detect)
        expect: hello                         # the reply's sentences contain this (any case); a list: all
      - speak: question.wav                   # an audio file (relative to this YAML), spoken in real time
        expect_stt: time                      # what the server heard contains this
      - say: set the volume to 30
        expect_tool: self.audio_speaker.set_volume
        expect_device: {volume: 30}           # the device's state after the reply
        expect_clean: true                    # nothing dropped, late or clipped
        max_first_audio_ms: 3000              # end of speech → first audio
      - say: tell me a long story
        barge_in_after_ms: 800                # interrupt it (abort) after 0.8 s of audio
      - wake: 你好小智                          # the wake word (default 你好小智); then listening. A greeting
                                              # is awaited only with an expect_* (some servers do not greet)
        reply: false                          # any step: don't wait for a reply
      - pause: 1.5                            # seconds

Files are checked and audio files read when the scenario is loaded, so a typo fails before connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from server.protocol.messages import LISTEN_MODES, ListenMode
from simulator.client import DeviceClient
from simulator.errors import SimulatorError
from simulator.events import AudioPlayed, EventStream, TurnFinished
from simulator.inputs import FileSource, speak
from simulator.metrics import percentile
from simulator.session import DEFAULT_WAKE_WORD, WAKE_GRACE_S, DeviceSession, greeting_started
from simulator.turns import TurnReport

__all__ = ["Scenario", "Step", "StepResult", "load_scenario", "run_scenario"]

ACTIONS = ("say", "speak", "wake", "pause")
OPTIONS = (
    "expect", "expect_stt", "expect_tool", "expect_device", "expect_clean", "max_first_audio_ms",
    "barge_in_after_ms", "timeout", "mode", "reply",
)  # fmt: skip
DEVICE_FIELDS = ("volume", "brightness", "theme", "light_on", "rgb", "battery_level", "charging")


@dataclass
class Step:
    number: int
    action: str  # say | speak | wake | pause
    value: Any  # text, audio file path, wake word, seconds
    source: FileSource | None = None
    expect: tuple[str, ...] = ()
    expect_stt: tuple[str, ...] = ()
    expect_tool: tuple[str, ...] = ()
    expect_device: dict[str, Any] = field(default_factory=dict)
    expect_clean: bool = False
    max_first_audio_ms: float | None = None
    barge_in_after_ms: float | None = None
    timeout: float | None = None
    mode: ListenMode | None = None
    reply: bool | None = None  # None: said and spoken turns wait for a reply, a wake word only if one is expected

    @property
    def reply_required(self) -> bool:
        if self.reply is not None:
            return self.reply
        if self.action != "wake":
            return True
        expectations = (self.expect, self.expect_stt, self.expect_tool, self.expect_device, self.expect_clean)
        return any(expectations) or self.max_first_audio_ms is not None or self.barge_in_after_ms is not None

    @property
    def label(self) -> str:
        if self.action == "speak":
            return f"speak {Path(self.value).name}"
        if self.action == "pause":
            return f"pause {self.value:g} s"
        return f"{self.action} {self.value!r}"


@dataclass
class Scenario:
    path: Path
    steps: list[Step]
    server: str | None = None
    protocol_version: int | None = None
    mode: ListenMode = "auto"
    timeout: float = 60.0


@dataclass
class StepResult:
    step: Step
    problems: list[str]
    report: TurnReport | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        detail = ""
        report = self.report
        if report is not None:
            reply = " ".join(report.sentences)
            detail = f" → {reply[:100]!r}" if reply else ""
            if report.first_frame_latency_s is not None:
                detail += f" (first audio {report.first_frame_latency_s * 1000:.0f} ms)"
        problems = "; ".join(self.problems)
        return f"turn {self.step.number} {verdict} {self.step.label}{detail}" + (f": {problems}" if problems else "")


# ---- loading ----------------------------------------------------------------------------------------------


def _texts(where: str, key: str, value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
        raise SimulatorError(f"{where}: {key} must be a text or a list of texts")
    return tuple(str(v) for v in items)


def _number(where: str, key: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise SimulatorError(f"{where}: {key} must be a number ≥ {minimum:g}, got {value!r}")
    return float(value)


def _mode(where: str, value: object) -> ListenMode:
    if value not in LISTEN_MODES:
        raise SimulatorError(f"{where}: mode must be one of {', '.join(LISTEN_MODES)}, got {value!r}")
    return value  # type: ignore[return-value]


def _step(path: Path, number: int, raw: object) -> Step:
    where = f"{path}: turn {number}"
    if isinstance(raw, str):
        raw = {"say": raw}
    if not isinstance(raw, dict):
        raise SimulatorError(f"{where}: expected a mapping such as {{say: hello}}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in ACTIONS and k not in OPTIONS]
    if unknown:
        raise SimulatorError(
            f"{where}: unknown key {unknown[0]!r} (actions: {', '.join(ACTIONS)}; options: {', '.join(OPTIONS)})"
        )
    actions = [k for k in ACTIONS if k in raw]
    if len(actions) != 1:
        raise SimulatorError(f"{where}: needs exactly one of {', '.join(ACTIONS)}, got {len(actions)}")
    action = actions[0]
    value = raw[action]
    step = Step(number, action, value)
    if action == "say":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
            raise SimulatorError(f"{where}: say needs the text to send")
        step.value = str(value)
    elif action == "speak":
        if not isinstance(value, str) or not value:
            raise SimulatorError(f"{where}: speak needs an audio file path")
        file = Path(value).expanduser()
        file = file if file.is_absolute() else path.parent / file
        try:
            step.source = FileSource(file)
        except SimulatorError as exc:
            raise SimulatorError(f"{where}: {exc}") from None
        step.value = str(file)
    elif action == "wake":
        step.value = DEFAULT_WAKE_WORD if value in (None, "") else str(value)
    else:
        step.value = _number(where, "pause", value)
    if "expect" in raw:
        step.expect = _texts(where, "expect", raw["expect"])
    if "expect_stt" in raw:
        step.expect_stt = _texts(where, "expect_stt", raw["expect_stt"])
    if "expect_tool" in raw:
        step.expect_tool = _texts(where, "expect_tool", raw["expect_tool"])
    if "expect_device" in raw:
        device = raw["expect_device"]
        if not isinstance(device, dict) or not device:
            raise SimulatorError(f"{where}: expect_device must be a mapping such as {{volume: 30}}")
        bad = [k for k in device if k not in DEVICE_FIELDS]
        if bad:
            fields = ", ".join(DEVICE_FIELDS)
            raise SimulatorError(f"{where}: expect_device: unknown field {bad[0]!r} (one of {fields})")
        step.expect_device = dict(device)
    if "expect_clean" in raw:
        if not isinstance(raw["expect_clean"], bool):
            raise SimulatorError(f"{where}: expect_clean must be true or false")
        step.expect_clean = raw["expect_clean"]
    if "max_first_audio_ms" in raw:
        step.max_first_audio_ms = _number(where, "max_first_audio_ms", raw["max_first_audio_ms"])
    if "barge_in_after_ms" in raw:
        step.barge_in_after_ms = _number(where, "barge_in_after_ms", raw["barge_in_after_ms"])
    if "timeout" in raw:
        step.timeout = _number(where, "timeout", raw["timeout"], 0.1)
    if "mode" in raw:
        step.mode = _mode(where, raw["mode"])
    if "reply" in raw:
        if not isinstance(raw["reply"], bool):
            raise SimulatorError(f"{where}: reply must be true or false")
        step.reply = raw["reply"]
    if action == "pause" and len(raw) > 1:
        raise SimulatorError(f"{where}: pause takes no options")
    return step


def load_scenario(path: Path | str) -> Scenario:
    """Read and check a scenario file; SimulatorError (one line, naming the file and turn) if it is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimulatorError(f"scenario file {path} does not exist") from None
    except OSError as exc:
        raise SimulatorError(f"cannot read scenario file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SimulatorError(f"{path}: not valid YAML{at}: {' '.join(str(problem).split())}") from None
    if isinstance(data, list):
        data = {"turns": data}
    if not isinstance(data, dict):
        raise SimulatorError(f"{path}: expected a mapping with a 'turns' list")
    known = ("server", "protocol_version", "mode", "timeout", "turns", "name", "description")
    unknown = [k for k in data if k not in known]
    if unknown:
        raise SimulatorError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(known)})")
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        raise SimulatorError(f"{path}: 'turns' must be a non-empty list")
    scenario = Scenario(path, [_step(path, i, raw) for i, raw in enumerate(turns, 1)])
    if data.get("server") is not None:
        if not isinstance(data["server"], str):
            raise SimulatorError(f"{path}: server must be a URL")
        scenario.server = data["server"]
    if data.get("protocol_version") is not None:
        if data["protocol_version"] not in (1, 2, 3) or isinstance(data["protocol_version"], bool):
            raise SimulatorError(f"{path}: protocol_version must be 1, 2 or 3, got {data['protocol_version']!r}")
        scenario.protocol_version = data["protocol_version"]
    if data.get("mode") is not None:
        scenario.mode = _mode(str(path), data["mode"])
    if data.get("timeout") is not None:
        scenario.timeout = _number(str(path), "timeout", data["timeout"], 0.1)
    return scenario


# ---- running ----------------------------------------------------------------------------------------------


def _contains(haystack: str, needles: tuple[str, ...]) -> list[str]:
    text = haystack.casefold()
    return [n for n in needles if n.casefold() not in text]


def check(step: Step, report: TurnReport | None, device: Any) -> list[str]:
    """What is wrong with the reply to ``step`` (empty: passed)."""
    if report is None:
        return []
    problems = []
    reply = " ".join(report.sentences)
    missing = _contains(reply, step.expect)
    if missing:
        problems.append(f"reply does not contain {missing[0]!r}")
    missing = _contains(report.stt or "", step.expect_stt)
    if missing:
        problems.append(f"the server heard {report.stt!r}, not {missing[0]!r}")
    called = [c.name for c in report.tool_calls]
    for tool in step.expect_tool:
        if tool not in called:
            problems.append(f"tool {tool} was not called (called: {', '.join(called) or 'none'})")
    for key, wanted in step.expect_device.items():
        actual = getattr(device, key)
        if isinstance(actual, tuple):
            actual = list(actual)
        if actual != wanted:
            problems.append(f"device {key} is {actual!r}, expected {wanted!r}")
    if step.expect_clean and not (report.dropped == report.late == report.clipped == 0 and not report.aborted):
        problems.append(
            f"not clean: {report.dropped} dropped, {report.late} late, {report.clipped} clipped"
            + (", interrupted" if report.aborted else "")
        )
    if step.max_first_audio_ms is not None:
        latency = report.first_frame_latency_s
        if latency is None:
            problems.append("no first audio was measured")
        elif latency * 1000 > step.max_first_audio_ms:
            problems.append(f"first audio after {latency * 1000:.0f} ms > {step.max_first_audio_ms:g} ms")
    if step.barge_in_after_ms is not None and not report.aborted:
        problems.append("the reply ended before it could be interrupted")
    return problems


async def _barge_in(client: DeviceClient, events: EventStream, after_ms: float, timeout: float) -> None:
    """Interrupt the coming reply once ``after_ms`` of its audio has played (the user talks over it)."""
    with contextlib.closing(events):
        await events.next(AudioPlayed, timeout=timeout)
        await asyncio.sleep(after_ms / 1000)
        if client.state == "speaking":
            await client.interrupt()
        else:  # it was over already: wait for its report
            await events.next(TurnFinished, timeout=timeout)


async def run_step(session: DeviceSession, scenario: Scenario, step: Step) -> StepResult:
    client = session.client
    timeout = step.timeout or scenario.timeout
    if step.action == "pause":
        await asyncio.sleep(float(step.value))
        return StepResult(step, [])
    await session.ensure_connected()
    barge: asyncio.Task[None] | None = None
    if step.barge_in_after_ms is not None:
        # Subscribed before the input goes out, so the reply's first audio cannot be missed.
        barge = asyncio.create_task(_barge_in(client, client.events(), step.barge_in_after_ms, timeout))
    # a wake word with nothing expected: its greeting is optional (subscribed before it goes out)
    greeting = client.events() if step.reply is None and not step.reply_required else None
    try:
        if step.action == "say":
            await client.interrupt()
            await client.send_text(step.value)
        elif step.action == "speak":
            assert step.source is not None
            await speak(client, step.source, step.mode or scenario.mode, realtime=True)
        else:
            await client.wake_word(step.value, step.mode or scenario.mode)
        if greeting is not None:
            if not await greeting_started(greeting, WAKE_GRACE_S):
                return StepResult(step, [])  # no greeting: fine
        elif not step.reply_required:
            return StepResult(step, [])
        try:
            report = await client.wait_for_turn(timeout)
        except SimulatorError as exc:
            return StepResult(step, [str(exc)])
        if barge is not None:
            try:
                await asyncio.wait_for(barge, timeout)
            except (SimulatorError, TimeoutError) as exc:
                return StepResult(step, [f"barge-in failed: {exc}"], report)
        return StepResult(step, check(step, report, client.device), report)
    finally:
        if greeting is not None:
            greeting.close()
        if barge is not None and not barge.done():
            barge.cancel()


async def run_scenario(
    session: DeviceSession, scenario: Scenario, on_result: Callable[[StepResult], None] | None = None
) -> list[StepResult]:
    """Play every step in order (a failed one does not stop the rest, a lost connection is retried)."""
    results = []
    for step in scenario.steps:
        try:
            result = await run_step(session, scenario, step)
        except SimulatorError as exc:
            result = StepResult(step, [str(exc)])
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def summary_line(scenario: Scenario, results: list[StepResult]) -> str:
    passed = sum(r.passed for r in results)
    latencies = [r.report.first_frame_latency_s * 1000 for r in results
                 if r.report is not None and r.report.first_frame_latency_s is not None]  # fmt: skip
    lat = f"; first audio p50 {percentile(latencies, 50):.0f} ms" if latencies else ""
    verdict = "PASSED" if passed == len(results) else "FAILED"
    return f"scenario {scenario.path.name} {verdict}: {passed} of {len(results)} turns passed{lat}"
