"""The one exception the simulator raises for things a user can fix (wrong URL, refused token, bad file).

``str()`` is always one line naming what failed and why, so a CLI or UI can show it as is.
"""

from __future__ import annotations


class SimulatorError(Exception):
    """A simulated-device operation failed for a reason outside the simulator's control."""


class ChannelUnavailable(SimulatorError):
    """The server could not be reached, timed out, or closed the channel before its hello: unlike a refusal
    (HTTP 4xx) or a bad URL, trying again later may work, so a device reconnects with backoff."""
