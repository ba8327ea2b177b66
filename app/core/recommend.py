"""Which (model, quantization) pairs to run on this machine, and why.

For every catalog model its quantizations are ranked by quality: the KL divergence the user
measured for that model and type (a stored evaluation), else the one expected for the type
(``app.core.expected_quality``). The best-ranked one that fits this machine's memory (on the
GPU, in RAM, or split between them) and reaches the speed target is kept, and its reason names
what ruled out the next better one: memory ('Q5_K_M would need 7.9 GiB, 7.2 GiB free for
models') or speed ('Q4_K_M would run at ~4.1 tok/s, under your 5 tok/s target').

Expected speed is memory bandwidth over the bytes a generated token reads (every active weight
once, plus the KV cache at half the context), times an efficiency factor: llama.cpp reaches
about 60% of copy bandwidth on CPUs and 70% on GPUs for token generation; small models fall
further short (their per-token overheads dominate), so small-model figures are optimistic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.core import expected_quality, memory, quant_types
from app.core.bandwidth import Bandwidth
from app.core.catalog import CatalogModel
from app.core.gguf_info import ModelInfo
from app.core.hardware import GIB, HardwareProfile
from app.core.storage import StoredEvaluation

LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")  # what catalog repos offer
CPU_EFFICIENCY = 0.6
GPU_EFFICIENCY = 0.7
MIN_TOKENS_PER_SECOND = 5.0
GOOD_TOKENS_PER_SECOND = 10.0
TOP_PICK_KLD = expected_quality.BANDS[1][0]  # a top pick loses at most "small loss"
_FIT_ORDER = {"gpu": 0, "ram": 1, "partial": 2, "too_large": 3}


@dataclass(frozen=True)
class Quality:
    """The KL divergence a quantization is ranked by, and where it comes from."""

    kld: float
    source: str  # "your evaluation #4, against Q8_0" or a table source ("Llama 3 8B")
    measured: bool

    def text(self) -> str:
        """'expected KLD 0.031 (Llama 3 8B): small loss'."""
        what = "measured" if self.measured else "expected"
        return f"{what} KLD {self.kld:.3g} ({self.source}): {expected_quality.band(self.kld)}"


Measured = Mapping[tuple[str, str], Quality]  # (catalog model name, quant) → measured quality


@dataclass(frozen=True)
class Recommendation:
    """One model at one quantization, with its plan, expected speed and the reason.

    ``constraint`` is what ruled out the next better quantization: "memory", "speed", or
    "none" when this is the best one offered.
    """

    model: CatalogModel
    quant: str
    plan: memory.FitPlan
    tokens_per_second: float
    size_bytes: int
    reason: str
    top_pick: bool = False
    quality: Quality | None = None
    constraint: str = "none"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"model": self.model.name, "quant": self.quant, "fit": self.plan.fit,
                "n_gpu_layers": self.plan.n_gpu_layers, "n_ctx": self.plan.n_ctx,
                "memory_bytes": self.plan.estimate.total, "size_bytes": self.size_bytes,
                "tokens_per_second": round(self.tokens_per_second, 1), "reason": self.reason,
                "constraint": self.constraint, "top_pick": self.top_pick,
                "kld": self.quality.kld if self.quality else None,
                "kld_measured": self.quality.measured if self.quality else None,
                "license": self.model.license, "gguf_repo": self.model.gguf_repo}


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


# --- quality: measured here, else expected ---------------------------------------------------


def _words(text: str) -> str:
    """A name as '-'-separated lowercase words with '-' at both ends, for matching."""
    return "-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") + "-"


def match_model(name: str, models: Sequence[CatalogModel]) -> CatalogModel | None:
    """The catalog model a file name belongs to ('Meta-Llama-3.1-8B-Instruct-Q4_K_M' →
    Llama-3.1-8B-Instruct): its name's words appear whole in the file's; the longest wins."""
    words = _words(name)
    hits = [m for m in models if _words(m.name) in words]
    return max(hits, key=lambda m: len(m.name), default=None)


def measured_quality(evaluations: Iterable[StoredEvaluation],
                     models: Sequence[CatalogModel]) -> dict[tuple[str, str], Quality]:
    """The KL divergences the user measured, by (catalog model, quant): the newest evaluation
    of a pair wins (``evaluations`` come newest first, as ``Storage.evaluations`` gives them).
    A stored result that is not shaped like an evaluation is skipped, not an error."""
    found: dict[tuple[str, str], Quality] = {}
    for stored in evaluations:
        try:
            reference = str(stored.result["reference"]["quant"])
            variants = list(stored.result["candidates"])
        except (KeyError, TypeError):
            continue
        for variant in variants:
            try:
                kld = variant["quality"]["kld_mean"]
                quant, name = str(variant["quant"]).upper(), str(variant["name"])
            except (KeyError, TypeError):
                continue
            model = match_model(name, models)
            if model is None or not isinstance(kld, (int, float)) or not math.isfinite(kld):
                continue
            found.setdefault((model.name, quant), Quality(
                float(kld), f"your evaluation #{stored.id}, against {reference}", True))
    return found


def quality_of(model: CatalogModel, quant: str, measured: Measured | None = None
               ) -> Quality | None:
    """The measured quality of ``model`` at ``quant`` when there is one, else the table's."""
    if measured and (model.name, quant) in measured:
        return measured[(model.name, quant)]
    figure = expected_quality.for_model(quant, model.n_params)
    return None if figure is None else Quality(figure.kld, figure.source, False)


# --- the choice and its reason ----------------------------------------------------------------


@dataclass(frozen=True)
class _Tried:
    quant: str
    info: ModelInfo
    plan: memory.FitPlan
    tps: float
    quality: Quality | None

    def blocked_by(self, min_tps: float) -> str | None:
        if self.plan.fit == "too_large":
            return "memory"
        return "speed" if self.tps < min_tps else None


def speed_text(tps: float) -> str:
    """'~4.6 tok/s', '~38 tok/s': one decimal where a target is near."""
    return f"~{tps:.1f} tok/s" if tps < 10 else f"~{tps:.0f} tok/s"


def _memory_words(plan: memory.FitPlan, profile: HardwareProfile) -> str:
    ram, vram, _ = memory.budgets(profile)
    est = plan.estimate
    if est.gpu is None:
        return (f"would need {est.cpu.total / GIB:.1f} GiB, {ram / GIB:.1f} GiB free for "
                "models")
    return (f"would need {est.total / GIB:.1f} GiB, {(ram + vram) / GIB:.1f} GiB free for "
            "models in RAM and on the GPU together")


def _where(plan: memory.FitPlan) -> str:
    size = f"{plan.estimate.total / GIB:.1f} GiB at {memory.context_label(plan.n_ctx)} context"
    if plan.fit == "partial":
        return (f"Runs split, {plan.n_gpu_layers} of {plan.estimate.n_layers + 1} layers on "
                f"your GPU: {size}")
    return f"{'Fits on your GPU' if plan.fit == 'gpu' else 'Fits in your RAM'}: {size}"


def _reason(chosen: _Tried, better: _Tried | None, constraint: str, min_tps: float,
            profile: HardwareProfile) -> str:
    if better is None:
        why = "the highest quality offered"
    elif constraint == "memory":
        why = f"{better.quant} {_memory_words(better.plan, profile)}"
    else:
        why = (f"{better.quant} would run at {speed_text(better.tps)}, under your "
               f"{min_tps:g} tok/s target")
    text = f"{chosen.quant}: {why}. {_where(chosen.plan)}, {speed_text(chosen.tps)}"
    if chosen.quality is not None:
        text += f"; {chosen.quality.text()}"
    return text + "."


def _ranked(model: CatalogModel, measured: Measured | None) -> list[tuple[str, Quality | None]]:
    """The ladder's types for ``model``, best quality (lowest KLD) first; a type without any
    figure goes by its bits per weight after those with one."""
    qualities = [(quant, quality_of(model, quant, measured)) for quant in LADDER]
    return sorted(qualities, key=lambda q: (q[1] is None, q[1].kld if q[1] else 0.0,
                                            -quant_types.by_name(q[0]).bits_per_weight))


def recommend_model(model: CatalogModel, profile: HardwareProfile, bw: Bandwidth,
                    n_ctx: int = 4096, min_tps: float = MIN_TOKENS_PER_SECOND,
                    measured: Measured | None = None) -> Recommendation | None:
    """The best-ranked quantization of ``model`` that fits here at ``min_tps`` or faster, with
    the reason; None when none does."""
    ctx = min(n_ctx, model.n_ctx_train)
    better: _Tried | None = None
    constraint = "none"
    for quant, quality in _ranked(model, measured):
        info = model.as_model_info(quant)
        plan = memory.plan(info, profile, n_ctx=ctx)
        tried = _Tried(quant, info, plan, tokens_per_second(info, plan.estimate, bw), quality)
        blocked = tried.blocked_by(min_tps)
        if blocked is None:
            return Recommendation(model, quant, plan, tried.tps, info.file_size,
                                  _reason(tried, better, constraint, min_tps, profile),
                                  quality=quality, constraint=constraint)
        better, constraint = tried, blocked
    return None


def recommend(profile: HardwareProfile, models: list[CatalogModel], bw: Bandwidth,
              n_ctx: int = 4096, min_tps: float = MIN_TOKENS_PER_SECOND,
              measured: Measured | None = None) -> list[Recommendation]:
    """One recommendation per model that runs here at ``min_tps`` or faster: fully on the GPU
    first, then in RAM, then split; larger models first. The top pick is the largest model
    that runs fully in one place at GOOD_TOKENS_PER_SECOND with at most a small loss."""
    found = [r for m in models
             if (r := recommend_model(m, profile, bw, n_ctx, min_tps, measured)) is not None]
    found.sort(key=lambda r: (_FIT_ORDER[r.plan.fit], -r.model.n_params))
    good = [r for r in found if r.tokens_per_second >= GOOD_TOKENS_PER_SECOND
            and r.plan.fit in ("gpu", "ram")
            and r.quality is not None and r.quality.kld < TOP_PICK_KLD]
    if good:
        best = max(good, key=lambda r: r.model.n_params)
        found = [Recommendation(r.model, r.quant, r.plan, r.tokens_per_second, r.size_bytes,
                                r.reason, top_pick=r is best, quality=r.quality,
                                constraint=r.constraint) for r in found]
    return found
