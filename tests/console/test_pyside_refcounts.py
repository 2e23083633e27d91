"""PySide6-Essentials 6.12.0 on CPython 3.11 drops a reference to None (and True/False) on every call of a Qt
method that returns nothing; at the console's redraw rate the process aborts with "none_dealloc" within
minutes. pyproject.toml pins below 6.12; this test fails if an installed PySide6 has the bug."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QCheckBox, QLabel


def test_qt_calls_keep_none_true_and_false_alive(qtbot) -> None:  # type: ignore[no-untyped-def]
    label, box = QLabel(), QCheckBox()
    qtbot.addWidget(label)
    qtbot.addWidget(box)
    before = sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)
    for i in range(20_000):
        label.setText("x")
        box.setChecked(i % 2 == 0)
        box.isChecked()
    after = sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)
    # The bug loses one reference per call (tens of thousands here); a stray reference or two is noise.
    assert all(abs(a - b) < 100 for a, b in zip(after, before, strict=True)), (before, after)
