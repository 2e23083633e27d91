"""Types for command-line flags, shared by every ``xiaozhi`` subcommand: a bad value is one clear line."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(low: int = 0, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """A flag type for an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        if high is not None and not low <= value <= high:
            allowed = f"{what} {low}-{high}" if what else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    return parse


non_negative_int = whole_number(0)
positive_int = whole_number(1)
port = whole_number(0, 65535, "a port number")  # 0 = any free port
server_port = whole_number(1, 65535, "a port number")  # a port to connect to


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value
