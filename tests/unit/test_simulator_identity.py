"""The simulated device's identity: generated once, remembered, never silently replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.errors import SimulatorError
from simulator.identity import load_identity, new_device_id


def test_device_id_is_a_lowercase_locally_administered_unicast_mac() -> None:
    for _ in range(50):
        mac = new_device_id()
        octets = [int(part, 16) for part in mac.split(":")]
        assert mac == mac.lower() and len(octets) == 6
        assert octets[0] & 0x02 and not octets[0] & 0x01


def test_identity_is_created_once_and_remembered(tmp_path: Path) -> None:
    first = load_identity(tmp_path / "sim")
    assert load_identity(tmp_path / "sim") == first
    assert load_identity(tmp_path / "sim", name="kitchen") != first
    assert json.loads((tmp_path / "sim" / "identity.json").read_text())["device_id"] == first.device_id
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == ["identity-kitchen.json", "identity.json"]


def test_a_damaged_identity_file_is_not_silently_replaced(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text('{"device_id": "AA:BB"}')
    with pytest.raises(SimulatorError, match=r"identity file .*identity\.json is damaged.*delete it"):
        load_identity(tmp_path)


def test_default_directory_is_the_per_user_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import simulator.identity as identity_module

    monkeypatch.setattr(identity_module.platformdirs, "user_data_path", lambda app: tmp_path / app)
    load_identity()
    assert (tmp_path / "xiaozhi-console" / "simulator" / "identity.json").exists()
