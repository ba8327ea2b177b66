"""A first answer to "how large a model can this machine run?", for the Hardware page.

This is a rule of thumb for one sentence of summary, not the memory estimate used to load a
model: weights at the type's average bits per weight, plus a fifth again for the KV cache of a
4k context and compute buffers, plus a fixed half GiB; RAM keeps back what the load plan keeps
back for the system. Loading a model uses ``app.core.memory`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core import quant_types
from app.core.hardware import GIB, HardwareProfile
from app.core.memory import RAM_RESERVE

OVERHEAD_FACTOR = 1.2
FIXED_OVERHEAD = GIB // 2


@dataclass(frozen=True)
class Capacity:
    """The largest model (parameters) that fits, and where."""

    n_params: int
    where: str  # "GPU" or "RAM"
    budget_bytes: int
    quant: str

    def sentence(self) -> str:
        """One line a person understands."""
        billions = self.n_params / 1e9
        size = f"{billions:.0f}" if billions >= 10 else f"{billions:.1f}"
        place = "on the GPU" if self.where == "GPU" else "in memory"
        return (f"This machine can run models up to about {size} B parameters at "
                f"{self.quant} fully {place}.")


def _params_for(budget: int, bits_per_weight: float) -> int:
    usable = max(0, budget - FIXED_OVERHEAD)
    return int(usable / (bits_per_weight / 8 * OVERHEAD_FACTOR))


def largest_model(profile: HardwareProfile, quant: str = quant_types.DEFAULT_NAME) -> Capacity:
    """The largest model of type ``quant`` that runs fully on the GPU(s), else fully in RAM."""
    bpw = quant_types.by_name(quant).bits_per_weight
    gpu_free = sum(d.memory_free or 0 for d in profile.gpus)
    ram_budget = max(0, profile.ram_available - RAM_RESERVE)
    if gpu_free > 0 and profile.apple is None:
        gpu = Capacity(_params_for(gpu_free, bpw), "GPU", gpu_free, quant)
        # A small GPU beside a lot of RAM: RAM runs larger models (slower, but fully loaded).
        if gpu.n_params >= _params_for(ram_budget, bpw) // 4:
            return gpu
    if profile.apple is not None and gpu_free > 0:
        # Unified memory: the GPU's share is the limit, and it is the fast path.
        return Capacity(_params_for(gpu_free, bpw), "GPU", gpu_free, quant)
    return Capacity(_params_for(ram_budget, bpw), "RAM", ram_budget, quant)

