"""The fit of a model known only by its file size: the fallback when its header cannot be read.

The rule is the Hardware page's rule of thumb (``app.core.capacity``): the file, a fifth again
for the KV cache of a 4K context and compute buffers, and a fixed half GiB, against the free
memory of the GPU, then RAM, with the margins the load plan keeps. It knows nothing of the
context, the layers or the vocabulary, so wherever it is shown it says that it is a guess and
why the exact estimate (``app.core.memory.plan``) could not be made.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core import capacity, memory
from app.core.hardware import HardwareProfile
from app.core.units import format_bytes

_BADGES = {"gpu": "Fits on GPU", "ram": "Fits in RAM", "too_large": "Too large"}


@dataclass(frozen=True)
class SizeFit:
    """Where a file of ``size`` bytes probably fits, by the size rule."""

    fit: str  # "gpu", "ram" or "too_large"
    size: int
    need: int

    @property
    def badge(self) -> str:
        """Short label for lists, marked as a guess."""
        return f"~{_BADGES[self.fit]}"

    def sentence(self) -> str:
        """'about 5.3 GiB by file size: probably fits in your RAM'."""
        where = {"gpu": "probably fits on your GPU", "ram": "probably fits in your RAM",
                 "too_large": "probably too large for this machine"}[self.fit]
        return f"about {format_bytes(self.need)} by file size: {where}"


def size_fit(size: int, profile: HardwareProfile) -> SizeFit:
    """The size rule's answer for a file of ``size`` bytes on this machine."""
    need = int(size * capacity.OVERHEAD_FACTOR + capacity.FIXED_OVERHEAD)
    ram, vram, _ = memory.budgets(profile)
    if vram and need <= vram:
        return SizeFit("gpu", size, need)
    if need <= ram:
        return SizeFit("ram", size, need)
    return SizeFit("too_large", size, need)
