"""Subtitles in the terminal: what the device shows on its screen (what the server heard, each sentence as
its audio starts, the emotion, alerts) plus what a tester wants to see (tool calls, a line of figures per
reply).  :func:`describe` is pure; :class:`Terminal` prints, one flushed line per event."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from simulator.events import (
    Alert,
    Disconnected,
    Emotion,
    Event,
    ProtocolError,
    Sentence,
    ServerCommand,
    StateChanged,
    SttText,
    ToolCalled,
    TurnFinished,
)
from simulator.metrics import turn_line

__all__ = ["SilentTerminal", "Terminal", "describe"]


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(event: Event, *, verbose: bool = False) -> str | None:
    """The subtitle line for ``event``, or None for events not shown."""
    match event:
        case SttText(text=text):
            return f"you: {text}"
        case Sentence(text=text, state="start"):
            return f"xiaozhi: {text}"
        case Emotion(emotion=emotion, text=text):
            return f"  [{emotion}{' ' + text if text else ''}]"
        case ToolCalled(name=name, arguments=arguments, result_text=result, is_error=is_error):
            args = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
            return f"  tool {name}({args}) → {'error: ' if is_error else ''}{_clip(result, 100)}"
        case Alert(status=status, message=message, emotion=emotion):
            return f"alert [{status}] {message}" + (f" ({emotion})" if emotion else "")
        case ServerCommand(command=command):
            return f"server: {command}"
        case ProtocolError(message=message):
            return f"warning: {_clip(message)}"
        case TurnFinished(report=report):
            return "  " + turn_line(report)
        case Disconnected(code=code, reason=reason):
            return f"disconnected (code {code}{': ' + reason if reason else ''})"
        case StateChanged(old=old, new=new) if verbose:
            return f"  ({old} → {new})"
    return None


class Terminal:
    def __init__(self, out: TextIO | None = None, *, quiet: bool = False, verbose: bool = False) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet
        self.verbose = verbose

    def show(self, event: Event) -> None:
        if self.quiet and not isinstance(event, (ProtocolError, Disconnected, Alert)):
            return
        line = describe(event, verbose=self.verbose)
        if line is not None:
            self.say(line)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def note(self, line: str) -> None:
        """Status and hints: stderr, so stdout stays the conversation."""
        print(line, file=sys.stderr, flush=True)


class SilentTerminal(Terminal):
    """For devices nobody watches (load mode): shows nothing."""

    def __init__(self) -> None:
        super().__init__(quiet=True)

    def show(self, event: Event) -> None:
        pass

    def say(self, line: str) -> None:
        pass

    def note(self, line: str) -> None:
        pass
