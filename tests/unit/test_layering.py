"""The shape style.md asks for: Qt only in the console's view layer (console/views, console/models, console/app.py,
console/cli.py); the headless parts — server/, simulator/ and console/domain/ — import no Qt at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QT = ("PySide6", "shiboken6", "pyqtgraph", "qasync")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["server", "simulator", "console/domain"])
def test_headless_packages_import_no_qt(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules?"
    offenders = {
        str(f.relative_to(ROOT)): sorted(m for m in imported_modules(f) if m.split(".")[0] in QT) for f in files
    }
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_check_sees_a_qt_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom PySide6.QtCore import QTimer\n", encoding="utf-8")
    assert "PySide6.QtCore" in imported_modules(module)
