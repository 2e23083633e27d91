"""The one exception the simulator raises for things a user can fix (wrong URL, refused token, bad file).

``str()`` is always one line naming what failed and why, so a CLI or UI can show it as is.
"""

from __future__ import annotations


class SimulatorError(Exception):
    """A simulated-device operation failed for a reason outside the simulator's control."""
