"""Runs as data: the steps of a quantize, imatrix, evaluate or wizard run, and how outputs are
named. The Quantize & Compare page, the wizard and the CLI build their runs here, so there is
one orchestration and one naming rule.

Every path is decided when the run is planned (the F16 reference, each quantization, the
importance matrix), so a stored run can be resumed exactly as it was planned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core import quant_types
from app.core.runs import RunStore
from app.core.storage import Storage
from app.pipeline.texts import TextSource

EVAL_LENGTHS = {"quick": 4, "standard": 12, "thorough": None}  # chunks of 512 tokens (None: all)
EVAL_SPEED_REPS = {"quick": 1, "standard": 3, "thorough": 3}
N_CTX = 512  # llama-perplexity's default chunk size


@dataclass(frozen=True)
class StepSpec:
    """One step to run: ``key`` is unique in its run; ``params`` is plain JSON."""

    key: str
    kind: str
    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class RunPlan:
    """What a run will do; ``options`` keeps what the user chose (shown again on resume)."""

    kind: str
    title: str
    steps: tuple[StepSpec, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def step(self, key: str) -> StepSpec:
        return next(s for s in self.steps if s.key == key)


def create(store: Storage, plan: RunPlan) -> int:
    """Store ``plan`` as a new run; returns its id (run it with ``Runner.run``)."""
    record = RunStore(store).create(plan.kind, plan.title, plan.options,
                                    [(s.key, s.kind, s.label, s.params) for s in plan.steps])
    return record.id


# ---------------------------------------------------------------------------------------- names

def stem(path: Path) -> str:
    """A model file's name without its type: 'SmolLM2-135M-Instruct.Q4_1.gguf' → its model."""
    return quant_types.without_name(Path(path).stem)


def quantized_path(out_dir: Path, model: str, quant: str, imatrix: bool) -> Path:
    return Path(out_dir) / f"{model}-{quant}{'-imat' if imatrix else ''}.gguf"


def imatrix_path(out_dir: Path, model: str) -> Path:
    return Path(out_dir) / f"{model}.imatrix.gguf"


def reference_path(out_dir: Path, model: str, type_name: str = "F16") -> Path:
    return Path(out_dir) / f"{model}-{type_name}.gguf"


# ---------------------------------------------------------------------------------------- steps

def convert_step(folder: Path, out: Path, type_name: str = "F16") -> StepSpec:
    return StepSpec("convert", "convert", f"Convert {Path(folder).name} to {type_name}",
                    {"folder": str(folder), "out": str(out), "type": type_name})


def dequantize_step(source: Path, out: Path, from_type: str) -> StepSpec:
    return StepSpec("reference", "dequantize", f"Make an F16 reference from the {from_type} file",
                    {"source": str(source), "out": str(out), "type": "F16"})


def imatrix_step(model: Path, text: TextSource, out: Path, *, chunks: int | None = None,
                 threads: int | None = None, expected_tokens: int | None = None,
                 n_ctx: int = N_CTX) -> StepSpec:
    params: dict[str, Any] = {"model": str(model), "text": text.to_json(), "out": str(out),
                              "n_ctx": n_ctx, "chunks": chunks, "threads": threads}
    if expected_tokens:
        params["expected_tokens"] = expected_tokens
    return StepSpec("imatrix", "imatrix", "Importance matrix from the calibration text", params)


def quantize_step(source: Path, out: Path, quant: str, *, imatrix: Path | None = None,
                  overrides: Sequence[tuple[str, str]] = (), output_type: str | None = None,
                  embedding_type: str | None = None, pure: bool = False,
                  allow_requantize: bool = False, threads: int | None = None) -> StepSpec:
    options = {"quant": quant, "output_tensor_type": output_type,
               "token_embedding_type": embedding_type,
               "overrides": [list(p) for p in overrides], "pure": pure,
               "allow_requantize": allow_requantize, "threads": threads,
               "imatrix": str(imatrix) if imatrix else None}
    return StepSpec(f"quantize:{quant}", "quantize", f"Quantize to {quant}",
                    {"source": str(source), "out": str(out), "options": options})


def evaluation_steps(reference: Path, candidates: Sequence[tuple[str, Path]], text: TextSource,
                     *, chunks: int | None, speed_reps: int = 3, threads: int | None = None,
                     title: str, expected_chunks: int | None = None,
                     n_ctx: int = N_CTX) -> list[StepSpec]:
    """The reference pass, one step per candidate (named), and the summary that stores the
    comparison."""
    common = {"reference": str(reference), "text": text.to_json(), "n_ctx": n_ctx,
              "chunks": chunks, "speed_reps": speed_reps, "threads": threads}
    if expected_chunks:
        common["expected_chunks"] = expected_chunks
    steps = [StepSpec("evaluate:reference", "evaluate_reference",
                      f"Measure the reference ({Path(reference).name})", dict(common))]
    for name, path in candidates:
        steps.append(StepSpec(f"evaluate:{name}", "evaluate", f"Measure {name} against it",
                              {**common, "candidate": str(path)}))
    steps.append(StepSpec("summary", "summary", "Compare and recommend", {
        "title": title, "text": text.to_json(), "n_ctx": n_ctx,
        "reference": "evaluate:reference",
        "candidates": [f"evaluate:{name}" for name, _ in candidates]}))
    return steps


# ---------------------------------------------------------------------------------------- runs

def quantize_plan(source: Path, types: Sequence[str], out_dir: Path, *,
                  calibration: TextSource | None = None, imatrix: Path | None = None,
                  overrides: Sequence[tuple[str, str]] = (), output_type: str | None = None,
                  embedding_type: str | None = None, pure: bool = False,
                  allow_requantize: bool = False, threads: int | None = None,
                  out: Path | None = None, imatrix_chunks: int | None = None) -> RunPlan:
    """Quantize a GGUF (or a Hugging Face folder, converted to F16 first) to ``types``,
    calibrated with an importance matrix computed from ``calibration`` (or the given
    ``imatrix`` file). ``out`` names the output when there is one type."""
    source, out_dir = Path(source), Path(out_dir)
    steps: list[StepSpec] = []
    if source.is_dir():
        f16 = reference_path(out_dir, source.name)
        steps.append(convert_step(source, f16))
        source = f16
    model = stem(source)
    if calibration is not None:
        imatrix = imatrix_path(out_dir, model)
        steps.append(imatrix_step(source, calibration, imatrix, chunks=imatrix_chunks,
                                  threads=threads))
    for quant in types:
        target = out if out is not None and len(types) == 1 else quantized_path(
            out_dir, model, quant, calibration is not None)
        steps.append(quantize_step(source, target, quant, imatrix=imatrix, overrides=overrides,
                                   output_type=output_type, embedding_type=embedding_type,
                                   pure=pure, allow_requantize=allow_requantize,
                                   threads=threads))
    return RunPlan("quantize", f"Quantize {model} to {', '.join(types)}", tuple(steps),
                   {"source": str(source), "types": list(types), "out_dir": str(out_dir)})


def imatrix_plan(model: Path, text: TextSource, out: Path, *, chunks: int | None = None,
                 threads: int | None = None, n_ctx: int = N_CTX) -> RunPlan:
    """One importance matrix."""
    return RunPlan("imatrix", f"Importance matrix of {Path(model).name}",
                   (imatrix_step(Path(model), text, Path(out), chunks=chunks, threads=threads,
                                 n_ctx=n_ctx),),
                   {"model": str(model)})


def evaluate_plan(reference: Path, candidates: Sequence[Path], text: TextSource, *,
                  chunks: int | None = None, speed_reps: int = 3, threads: int | None = None,
                  title: str | None = None, n_ctx: int = N_CTX) -> RunPlan:
    """Evaluate ``candidates`` against ``reference`` and store the comparison."""
    names = _unique_names([Path(c) for c in candidates])
    title = title or f"{Path(reference).stem} vs {len(names)} variants"
    steps = evaluation_steps(Path(reference), names, text, chunks=chunks,
                             speed_reps=speed_reps, threads=threads, title=title, n_ctx=n_ctx)
    return RunPlan("evaluate", title, tuple(steps), {"reference": str(reference)})


def _unique_names(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """Step names for candidates: their file stems, numbered when two are the same."""
    named: list[tuple[str, Path]] = []
    seen: dict[str, int] = {}
    for path in paths:
        name = path.stem
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name} ({seen[name]})", path))
    return named
