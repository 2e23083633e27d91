"""Who the simulated device is: a MAC-form device id and a UUID client id, generated once and remembered.

The firmware uses its Wi-Fi MAC as ``Device-Id`` and a UUID kept in NVS as ``Client-Id`` (protocol.md §1.1);
both survive reboots, and servers key conversations, tokens and context by them.  So the simulator keeps
them in a small JSON file: the same simulated device is recognised across runs, while several named
identities can coexist for running many devices.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from simulator.errors import SimulatorError

__all__ = ["DeviceIdentity", "default_identity_dir", "load_identity", "new_device_id"]

APP_NAME = "xiaozhi-console"
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str  # lowercase MAC with colons, as the firmware sends it
    client_id: str  # UUID string

    @classmethod
    def generate(cls) -> DeviceIdentity:
        return cls(new_device_id(), str(uuid.uuid4()))


def new_device_id() -> str:
    """A random unicast MAC with the locally-administered bit set.

    That bit marks the address as not burnt into real hardware, so a simulated device can never collide
    with a real ESP32 (whose Espressif OUI has the bit clear).
    """
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] | 0x02) & 0xFE  # locally administered, not multicast
    return ":".join(f"{b:02x}" for b in octets)


def default_identity_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "simulator"


def _identity_file(directory: Path, name: str) -> Path:
    if not _NAME_RE.fullmatch(name):
        raise SimulatorError(f"identity name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return directory / ("identity.json" if name == "default" else f"identity-{name}.json")


def _parse(path: Path, text: str) -> DeviceIdentity:
    try:
        data = json.loads(text)
        device_id, client_id = data["device_id"], data["client_id"]
        if not isinstance(device_id, str) or not _MAC_RE.fullmatch(device_id):
            raise ValueError(f"device_id {device_id!r} is not a lowercase MAC")
        uuid.UUID(str(client_id))
    except (ValueError, KeyError, TypeError) as exc:
        # Silently replacing it would turn this into a different device on the server.
        raise SimulatorError(f"identity file {path} is damaged ({exc}); delete it to create a new identity") from None
    return DeviceIdentity(device_id, str(client_id))


def load_identity(directory: Path | str | None = None, name: str = "default") -> DeviceIdentity:
    """The identity stored under ``directory`` (default: the per-user data dir), created on first use."""
    folder = Path(directory) if directory is not None else default_identity_dir()
    path = _identity_file(folder, name)
    try:
        return _parse(path, path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SimulatorError(f"cannot read identity file {path}: {exc.strerror or exc}") from None
    identity = DeviceIdentity.generate()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Complete file first, then publish it: a crash mid-write must not leave a half file that reads
        # as "damaged".  link() refuses to overwrite, so when two simulators start at once the second
        # adopts the first one's identity instead of both believing in different ones.
        tmp.write_text(json.dumps({"device_id": identity.device_id, "client_id": identity.client_id}, indent=2) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _parse(path, path.read_text(encoding="utf-8"))
        except OSError:  # filesystems without hard links
            tmp.replace(path)
    except OSError as exc:
        raise SimulatorError(f"cannot save identity file {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return identity
