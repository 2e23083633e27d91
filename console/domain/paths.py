"""Where the console keeps its own files (window layout, saved connection, secrets fallback).

``XIAOZHI_CONSOLE_CONFIG_DIR`` moves all of it (tests point it at a temporary directory, so no test
ever reads or writes the user's real settings)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "xiaozhi-console"
ENV = "XIAOZHI_CONSOLE_CONFIG_DIR"


def config_dir() -> Path:
    path = Path(os.environ[ENV]) if os.environ.get(ENV) else platformdirs.user_config_path(APP_NAME)
    path.mkdir(parents=True, exist_ok=True)
    return path
