"""Which (model, quantization) pairs to run on this machine, and why.

For every catalog model the best quantization (highest quality first) that fits fully — on the
GPU, else in RAM — at a usable speed is kept; failing that, a partial offload. Expected speed is
memory bandwidth over the bytes a generated token reads (every active weight once, plus the KV
cache at half the context), times an efficiency factor: llama.cpp reaches about 60% of copy
bandwidth on CPUs and 70% on GPUs for token generation; small models fall further short (their
per-token overheads dominate), so small-model figures are optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core import memory, quant_types
from app.core.bandwidth import Bandwidth
from app.core.catalog import CatalogModel
from app.core.gguf_info import ModelInfo
from app.core.hardware import GIB, HardwareProfile

LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
CPU_EFFICIENCY = 0.6
GPU_EFFICIENCY = 0.7
MIN_TOKENS_PER_SECOND = 5.0
GOOD_TOKENS_PER_SECOND = 10.0
_FIT_ORDER = {"gpu": 0, "ram": 1, "partial": 2, "too_large": 3}


@dataclass(frozen=True)
class Recommendation:
    """One model at one quantization, with its plan, expected speed and the reason."""

    model: CatalogModel
    quant: str
    plan: memory.FitPlan
    tokens_per_second: float
    size_bytes: int
    reason: str
    top_pick: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"model": self.model.name, "quant": self.quant, "fit": self.plan.fit,
                "n_gpu_layers": self.plan.n_gpu_layers, "n_ctx": self.plan.n_ctx,
                "memory_bytes": self.plan.estimate.total, "size_bytes": self.size_bytes,
                "tokens_per_second": round(self.tokens_per_second, 1), "reason": self.reason,
                "top_pick": self.top_pick, "license": self.model.license,
                "gguf_repo": self.model.gguf_repo}


def tokens_per_second(info: ModelInfo, est: memory.MemoryEstimate, bw: Bandwidth) -> float:
    """Expected generation speed for ``info`` loaded as ``est`` on a machine with ``bw``."""
    tied = not any(t.name == "output.weight" for t in info.tensors)
    embedding = sum(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
    kv_read = 0.5  # a conversation halfway through its context
    cpu_bytes = est.cpu.weights - (0 if tied else embedding) + est.cpu.kv_cache * kv_read
    seconds = cpu_bytes / (bw.cpu * CPU_EFFICIENCY)
    if est.gpu is not None and bw.gpu:
        gpu_bytes = est.gpu.weights + est.gpu.kv_cache * kv_read
        seconds += gpu_bytes / (bw.gpu * GPU_EFFICIENCY)
    return 1.0 / seconds if seconds > 0 else 0.0


def _reason(model: CatalogModel, quant: str, plan: memory.FitPlan, tps: float,
            profile: HardwareProfile) -> str:
    where = {"gpu": "fits fully on your GPU", "ram": "fits in your RAM",
             "partial": "runs split between your GPU and CPU"}[plan.fit]
    text = (f"Best quality of {model.name} that {where}: {quant}, "
            f"{plan.estimate.total / GIB:.1f} GiB at context {plan.n_ctx:,}, "
            f"about {tps:.0f} tokens/s.")
    if quant_types.by_name(quant).bits_per_weight < quant_types.by_name("Q4_K_M").bits_per_weight:
        text += " Only a 3- or 2-bit file fits: expect visibly lower quality."
    if plan.fit == "ram" and profile.gpus:
        text += " Too large for the GPU's free memory."
    return text


def recommend(profile: HardwareProfile, models: list[CatalogModel], bw: Bandwidth,
              n_ctx: int = 4096, min_tps: float = MIN_TOKENS_PER_SECOND) -> list[Recommendation]:
    """One recommendation per model that runs here at ``min_tps`` or faster, best first."""
    found: list[Recommendation] = []
    for model in models:
        ctx = min(n_ctx, model.n_ctx_train)
        fallback: Recommendation | None = None
        chosen: Recommendation | None = None
        for quant in LADDER:
            info = model.as_model_info(quant)
            plan = memory.plan(info, profile, n_ctx=ctx)
            if plan.fit == "too_large":
                continue
            tps = tokens_per_second(info, plan.estimate, bw)
            if tps < min_tps:
                continue
            rec = Recommendation(model, quant, plan, tps, info.file_size,
                                 _reason(model, quant, plan, tps, profile))
            if plan.fit in ("gpu", "ram"):
                chosen = rec
                break
            fallback = fallback or rec
        if chosen or fallback:
            found.append(chosen or fallback)  # type: ignore[arg-type]
    found.sort(key=lambda r: (_FIT_ORDER[r.plan.fit], -r.model.n_params))
    good = [r for r in found if r.tokens_per_second >= GOOD_TOKENS_PER_SECOND
            and r.plan.fit in ("gpu", "ram") and r.quant in LADDER[:4]]
    if good:
        best = max(good, key=lambda r: r.model.n_params)
        found = [Recommendation(r.model, r.quant, r.plan, r.tokens_per_second, r.size_bytes,
                                r.reason, top_pick=r is best) for r in found]
    return found
