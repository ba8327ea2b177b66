"""Events that long engine jobs (quantize, dequantize, and those to come) yield alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Step ``done`` of ``total``; ``message`` names it (for tensors, the tensor's name)."""

    done: int
    total: int
    message: str
