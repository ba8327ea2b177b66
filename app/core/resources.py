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


CALIBRATION_TEXT = "texts/calibration.txt"
EVALUATION_TEXT = "texts/evaluation.txt"


def calibration_text() -> str:
    """The bundled calibration text (for importance matrices): varied English prose and code."""
    return resource(CALIBRATION_TEXT).read_text(encoding="utf-8")


def evaluation_text() -> str:
    """The bundled evaluation text (for perplexity and KL divergence); shares nothing with the
    calibration text, so a quantization tuned on one is measured on the other."""
    return resource(EVALUATION_TEXT).read_text(encoding="utf-8")
