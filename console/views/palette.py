"""Colours that follow the system light/dark palette."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

_LIGHT = {"user": "#d7ecff", "assistant": "#e9f7df", "tool": "#f3ecd9", "system": "#ececec", "mark": "#ffd54f"}
_DARK = {"user": "#1e3a55", "assistant": "#243d22", "tool": "#4a3f24", "system": "#3a3a3a", "mark": "#8a6d00"}


def is_dark() -> bool:
    app = QApplication.instance()
    if app is None:
        return False
    window: QColor = app.palette().color(QPalette.ColorRole.Window)  # type: ignore[attr-defined]
    return window.lightness() < 128


def role_colour(role: str) -> str:
    return (_DARK if is_dark() else _LIGHT).get(role, "#888888")


def mark_colour() -> str:
    return (_DARK if is_dark() else _LIGHT)["mark"]
