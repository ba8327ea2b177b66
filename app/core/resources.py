"""Locate files under ``resources/`` (the repo's folder, or the bundle's in a frozen build)."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    """The folder holding icons, the style sheet, the catalog and the bundled texts."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen is not None:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def resource(name: str) -> Path:
    """Path of one resource file."""
    return resources_dir() / name
