"""The full hardware profile, with llama.cpp's devices read in a child process.

Loading llama.cpp initialises GPU drivers (a CUDA context alone takes hundreds of MB); doing it
in a short-lived child keeps that out of the GUI process and keeps a driver crash from taking
the window down.
"""

from __future__ import annotations

import logging

from app.core import hardware
from app.core.hardware import HardwareProfile, LlamaBuild
from app.engine.child import ChildError, call_in_child

log = logging.getLogger(__name__)


def _read_in_child() -> LlamaBuild:
    from app.engine import devices, llama_log

    llama_log.install()
    return devices.read_llama_build()


def llama_build(timeout: float = 60.0) -> tuple[LlamaBuild | None, str | None]:
    """llama.cpp's backends and devices, or None and the reason they could not be read."""
    try:
        return call_in_child(_read_in_child, timeout=timeout), None
    except ChildError as exc:
        log.warning("llama.cpp device probe failed: %s", exc)
        return None, str(exc)


def full_profile(timeout: float = 60.0) -> HardwareProfile:
    """Probe the machine, llama.cpp's view included; never raises."""
    build, error = llama_build(timeout)
    return hardware.probe(build, error)
