"""Where QuantDesk keeps its files.

Everything lives under one folder: ``platformdirs.user_data_dir("QuantDesk")`` or, when set,
the ``QUANTDESK_HOME`` environment variable (tests always set it to a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "QuantDesk"
HOME_ENV = "QUANTDESK_HOME"


def data_home() -> Path:
    """Return the app's data folder, creating it if needed."""
    override = os.environ.get(HOME_ENV)
    home = Path(override).expanduser() if override else Path(platformdirs.user_data_dir(APP_NAME))
    home.mkdir(parents=True, exist_ok=True)
    return home


def _subdir(name: str) -> Path:
    path = data_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Folder where downloaded, converted and quantized models are written."""
    return _subdir("models")


def checkpoints_dir() -> Path:
    """Folder for Hugging Face checkpoints fetched for conversion (can be deleted afterwards)."""
    return _subdir("checkpoints")


def logs_dir() -> Path:
    """Folder for the app's rotating log files."""
    return _subdir("logs")


def cache_dir() -> Path:
    """Folder for data the app can rebuild (probe results, reference distributions)."""
    return _subdir("cache")


def settings_path() -> Path:
    """The settings file (JSON, written atomically)."""
    return data_home() / "settings.json"


def database_path() -> Path:
    """The SQLite database of chats, the model library and evaluation results."""
    return data_home() / "quantdesk.sqlite3"
