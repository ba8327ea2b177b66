"""The auto mix as a run: sensitivity → allocation → quantize with the recipe → proof.

Steps (each stored and resumable like every run's):

1. ``automix_sensitivity``: the proxy table (``app.engine.sensitivity.proxy``), no model run;
2. ``automix_measure`` (quick or full): each group's KLD change on the calibration text sets
   the gains;
3. ``automix_allocate``: the budget in bytes (a stock type's size from llama.cpp's dry run, or
   bits per weight), the allocation, the recipe; the recipe's own dry run must give every
   tensor the allocated type and fit the budget, or the step fails; the recipe is saved
   under ``data_home()/recipes``;
4. ``automix_quantize``: llama.cpp's quantizer with the recipe's overrides and the imatrix;
5. the proof: the stock type of equal or larger size quantized with the same imatrix, both
   evaluated against the reference on the evaluation text (never the calibration text),
   stored as an evaluation.

``automix_plan`` builds the whole run (the CLI and the Quantize page); ``automix_steps`` gives
steps 1–4 for a run that has its reference and imatrix already (the wizard).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core import automix as am
from app.core import quant_types
from app.core import recipe as rc
from app.core.storage import Storage
from app.pipeline import plans, steps
from app.pipeline.events import PipelineCancelled, PipelineError
from app.pipeline.steps import Kind, Rates, StepContext, StepRun, _build, _size
from app.pipeline.texts import TextSource

MEASURES = ("proxy", "quick", "full")
# The stock types a mix is compared with, largest first: for a bits-per-weight budget, the
# smallest of them at least as large as the mix.
STOCK_LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
MIX_NAME = "automix"


def _engine_errors() -> tuple[type[Exception], ...]:
    from app.engine.quantize import QuantizeError
    from app.engine.sensitivity import SensitivityError

    return (am.AutomixError, rc.RecipeError, SensitivityError, QuantizeError)


def _as_pipeline_error(exc: Exception) -> PipelineError:
    """The engine's and core's errors as the run's: cancel stays cancel."""
    if type(exc).__name__.endswith("Cancelled"):
        return PipelineCancelled(str(exc) or "Cancelled.")
    return PipelineError(str(exc))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from app.core.atomic import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data))


def read_table(path: Path) -> am.SensitivityTable:
    """A sensitivity table saved by a run (PipelineError when it cannot be read)."""
    try:
        return am.SensitivityTable.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, am.AutomixError) as exc:
        raise PipelineError(f"The sensitivity table {path} cannot be read: {exc}") from None


# ------------------------------------------------------------------------------- step kinds

class Sensitivity(Kind):
    """The proxy: importance-weighted error of every tensor at every candidate type."""

    name = "automix_sensitivity"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        imatrix = params.get("imatrix")
        return [Path(params["source"]), *([Path(imatrix)] if imatrix else [])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return _build()

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine import sensitivity

        imatrix = params.get("imatrix")
        table: am.SensitivityTable | None = None
        try:
            for event in sensitivity.proxy(
                    Path(params["source"]), Path(imatrix) if imatrix else None,
                    types=params.get("types") or am.DEFAULT_CANDIDATES,
                    threads=params.get("threads"), cancel=ctx.cancel):
                if isinstance(event, am.SensitivityTable):
                    table = event
                else:
                    yield event
        except _engine_errors() as exc:
            raise _as_pipeline_error(exc) from None
        assert table is not None
        _write_json(Path(params["out"]), table.to_json())
        return {"path": params["out"], "tensors": len(table.tensors), "seconds": table.seconds}

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        # ggml's quantizers on sampled rows: about 10 s for SmolLM2 (270 MB of F16) here
        return _size(params["source"], 3e8) / 25e6 + 2 * rates.load_seconds


class Measure(Kind):
    """The KLD change of each group of tensors, moved alone, on the calibration text."""

    name = "automix_measure"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        imatrix = params.get("imatrix")
        return [Path(params["source"]), Path(params["table"]),
                *([Path(imatrix)] if imatrix else [])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"text": TextSource.from_json(params["text"]).sha256(), **_build()}

    def stale(self, params: dict[str, Any]) -> list[Path]:
        out = Path(params["out"])
        probe = out.parent / f".{Path(params['source']).stem}.automix-probe.gguf"
        return [*super().stale(params), probe, probe.with_name(f".{probe.name}.part")]

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine import sensitivity

        imatrix = params.get("imatrix")
        table = read_table(Path(params["table"]))
        measured: am.SensitivityTable | None = None
        try:
            for event in sensitivity.measure(
                    Path(params["source"]), table, TextSource.from_json(params["text"]).read(),
                    mode=params["mode"], imatrix=Path(imatrix) if imatrix else None,
                    work_dir=Path(params["out"]).parent, threads=params.get("threads"),
                    cancel=ctx.cancel):
                if isinstance(event, am.SensitivityTable):
                    measured = event
                elif not isinstance(event, am.GroupMeasurement):
                    yield event
        except _engine_errors() as exc:
            raise _as_pipeline_error(exc) from None
        assert measured is not None
        _write_json(Path(params["out"]), measured.to_json())
        return {"path": params["out"], "groups": len(measured.measurements),
                "seconds": measured.seconds}

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        from app.engine.sensitivity import MEASURE_CHUNKS, MEASURE_PARTS

        groups = 7 * MEASURE_PARTS.get(params["mode"], 3) + 2
        tokens = MEASURE_CHUNKS.get(params["mode"], 2) * 512
        per_group = tokens / rates.prompt_tokens_per_s + 1.5 + 2 * rates.load_seconds
        return groups * per_group


def stock_bytes(source: Path, stock: str) -> tuple[int, dict[str, str]]:
    """A stock type's tensor bytes on ``source`` and its tensor types (llama.cpp's dry run),
    counted the way ``automix.allocate`` counts."""
    from app.core.gguf_info import read_model_info
    from app.engine.quantize import QuantizeOptions, estimate_size

    types = dict(estimate_size(source, QuantizeOptions(stock, allow_requantize=True))
                 .tensor_types)
    shapes = {t.name: t.shape for t in read_model_info(source).tensors}
    return sum(am.tensor_bytes(shapes[n], types.get(n, "F32")) for n in shapes), types


class Allocate(Kind):
    """The type per tensor within the budget, as a recipe checked by llama.cpp's dry run."""

    name = "automix_allocate"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["source"]), Path(params["table"])]

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["recipe"])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return _build()

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        try:
            result = allocate_recipe(Path(params["source"]), read_table(Path(params["table"])),
                                     am.Budget.from_json(params["budget"]), params["base"],
                                     params["name"], params.get("types"))
        except _engine_errors() as exc:
            raise _as_pipeline_error(exc) from None
        recipe, stock_loss = result
        path = rc.save(recipe, Path(params["recipe"]))
        return {"path": str(path), "bytes": recipe.bytes, "budget": params["budget"],
                "bits_per_weight": recipe.bits_per_weight,
                "predicted_kld": recipe.predicted_kld, "stock_predicted_kld": stock_loss,
                "rules": recipe.describe()}
        yield  # a generator like the others: the dry runs take a second or two

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return 3.0


def allocate_recipe(source: Path, table: am.SensitivityTable, budget: am.Budget, base: str,
                    name: str, types: Sequence[str] | None = None
                    ) -> tuple[rc.Recipe, float | None]:
    """The recipe of the auto mix of ``table`` within ``budget``, checked by llama.cpp's dry
    run (every tensor gets the allocated type, the size fits); and the predicted loss of the
    stock type ``base`` on the same scale (None when it uses types the table lacks)."""
    from app.engine.quantize import QuantizeOptions, estimate_size

    stock, stock_types = stock_bytes(source, base)
    limit = stock if budget.stock else am.bpw_bytes(budget.bpw or 0.0, table.n_elements)
    allocation = am.allocate(table, limit, types)
    rules = rc.rules_for(allocation.types)
    recipe = rc.Recipe(name, base, rules, table.architecture, table.n_layers)
    dry = estimate_size(source, QuantizeOptions(base, overrides=recipe.overrides(),
                                                allow_requantize=True))
    planned = dict(dry.tensor_types)
    wrong = [n for n, t in allocation.types.items() if planned.get(n) != t]
    if wrong:
        raise am.AutomixError(f"llama.cpp would store {wrong[0]} as {planned.get(wrong[0])}, "
                              f"not {allocation.types[wrong[0]]} as the recipe says.")
    if allocation.bytes > limit:
        raise am.AutomixError("The mix came out larger than the budget.")
    bpw = allocation.bytes * 8 / table.n_elements
    recipe = rc.Recipe(name, base, rules, table.architecture, table.n_layers, budget.label,
                       table.model, allocation.bytes, round(bpw, 4),
                       allocation.predicted_loss if table.measure != "proxy" else None,
                       table.measure)
    return recipe, am.predicted_loss(table, stock_types) if table.measure != "proxy" else None


class QuantizeRecipe(Kind):
    """llama.cpp's quantizer with a recipe's overrides."""

    name = "automix_quantize"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        imatrix = params.get("imatrix")
        return [Path(params["source"]), Path(params["recipe"]),
                *([Path(imatrix)] if imatrix else [])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return _build()

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.quantize import Quantized, QuantizeOptions, TensorType, quantize

        try:
            recipe = rc.load(Path(params["recipe"]))
        except rc.RecipeError as exc:
            raise PipelineError(str(exc)) from None
        options = QuantizeOptions(recipe.base, overrides=recipe.overrides(),
                                  imatrix=params.get("imatrix"), threads=params.get("threads"))
        result: dict[str, Any] = {}
        for event in quantize(Path(params["source"]), Path(params["out"]), options, ctx.cancel):
            if isinstance(event, Quantized):
                result = {"path": str(event.path), "quant": MIX_NAME, "size": event.size,
                          "seconds": event.seconds, "recipe": params["recipe"]}
            elif not isinstance(event, TensorType):
                yield event
        return result

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        source = _size(params["source"], float(params.get("expected_source_bytes", 1e8)))
        return source / rates.quantize_bytes_per_s * 4.0 + rates.load_seconds


KINDS: tuple[Kind, ...] = (Sensitivity(), Measure(), Allocate(), QuantizeRecipe())
steps.KINDS.update({k.name: k for k in KINDS})  # steps.py imports this module for it


# ------------------------------------------------------------------------------------- plans

def _model(source: Path) -> str:
    return plans.stem(source)


def recipe_name(model: str, budget: am.Budget, measure: str) -> str:
    """'SmolLM2-135M-Instruct-Q4_K_M-quick': a file name for the recipe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{budget.tag}-{measure}")


def mix_path(out_dir: Path, model: str, budget: am.Budget, imatrix: bool) -> Path:
    return plans.quantized_path(out_dir, model, f"{MIX_NAME}-{budget.tag}", imatrix)


def automix_steps(reference: Path, out_dir: Path, budget: am.Budget, base: str, *,
                  imatrix: Path | None, measure: str = "quick",
                  calibration: TextSource | None = None, types: Sequence[str] | None = None,
                  threads: int | None = None) -> tuple[list[plans.StepSpec], Path]:
    """Steps 1–4 for a reference (an F16/BF16/F32 GGUF) whose importance matrix the run
    has: sensitivity, measurement (unless ``measure`` is 'proxy'), allocation, quantization
    with the recipe. ``base`` is the stock type the recipe builds on (the comparison type).
    Returns the steps and the mix's path."""
    if measure not in MEASURES:
        raise PipelineError(f"The measurement is proxy, quick or full, not {measure!r}.")
    model = _model(reference)
    out_dir = Path(out_dir)
    table = out_dir / f"{model}.sensitivity.json"
    common = {"source": str(reference), "imatrix": str(imatrix) if imatrix else None,
              "threads": threads}
    steps = [plans.StepSpec("automix:sensitivity", "automix_sensitivity",
                            "Sensitivity of every tensor (no model run)",
                            {**common, "types": list(types) if types else None,
                             "out": str(table)})]
    if measure != "proxy":
        measured = out_dir / f"{model}.sensitivity-{measure}.json"
        steps.append(plans.StepSpec(
            "automix:measure", "automix_measure",
            f"Measure what each group of tensors costs ({measure})",
            {**common, "table": str(table), "mode": measure, "out": str(measured),
             "text": (calibration or TextSource.calibration()).to_json()}))
        table = measured
    name = recipe_name(model, budget, measure)
    recipe = rc.recipes_dir() / f"{name}.json"
    steps.append(plans.StepSpec("automix:allocate", "automix_allocate",
                                f"Choose a type per tensor within {budget.label}",
                                {"source": str(reference), "table": str(table),
                                 "budget": budget.to_json(), "base": base, "name": name,
                                 "types": list(types) if types else None,
                                 "recipe": str(recipe)}))
    out = mix_path(out_dir, model, budget, imatrix is not None)
    steps.append(plans.StepSpec("automix:quantize", "automix_quantize",
                                f"Quantize with the auto mix ({budget.label})",
                                {**common, "recipe": str(recipe), "out": str(out)}))
    return steps, out


def automix_plan(source: Path, budget: am.Budget, out_dir: Path, *,
                 imatrix: Path | None = None, calibration: TextSource | None = None,
                 measure: str = "quick", evaluation: str = "quick",
                 types: Sequence[str] | None = None, threads: int | None = None) -> plans.RunPlan:
    """The whole run for ``source`` (a GGUF; a quantized one gets an F16 reference first):
    the importance matrix from ``calibration`` (the bundled text by default) unless an
    ``imatrix`` file is given, steps 1–4, the stock comparison type with the same imatrix,
    and both evaluated against the reference on the evaluation text."""
    from app.pipeline import wizard

    if evaluation not in plans.EVAL_LENGTHS:
        raise PipelineError(f"Evaluation length is quick, standard or thorough, not "
                            f"{evaluation}.")
    source, out_dir = Path(source), Path(out_dir)
    found = wizard.from_gguf(source)
    steps: list[plans.StepSpec] = []
    reference = source
    model = found.model_name
    if found.quantized:
        reference = plans.reference_path(out_dir, model)
        steps.append(plans.dequantize_step(source, reference, found.precision))
    if imatrix is None:
        imatrix = plans.imatrix_path(out_dir, model)
        steps.append(plans.imatrix_step(reference, calibration or TextSource.calibration(),
                                        imatrix, threads=threads))
    base = budget.stock or _stock_at_least(budget, source)
    mix_steps, mix = automix_steps(reference, out_dir, budget, base, imatrix=imatrix,
                                   measure=measure, calibration=calibration, types=types,
                                   threads=threads)
    steps += mix_steps
    stock = plans.quantized_path(out_dir, model, base, True)
    steps.append(plans.quantize_step(reference, stock, base, imatrix=imatrix, threads=threads))
    steps += plans.evaluation_steps(
        reference, [(base, stock), (MIX_NAME, mix)], TextSource.evaluation(),
        chunks=plans.EVAL_LENGTHS[evaluation], speed_reps=plans.EVAL_SPEED_REPS[evaluation],
        threads=threads, title=f"{found.label}: auto mix at {budget.label} vs {base}")
    return plans.RunPlan("automix", f"Auto mix of {model} at {budget.label}", tuple(steps),
                         {"source": str(source), "reference": str(reference),
                          "budget": budget.to_json(), "measure": measure, "stock": base,
                          "out_dir": str(out_dir)})


def with_automix(plan: plans.RunPlan, budget: am.Budget, measure: str = "quick"
                 ) -> plans.RunPlan:
    """``plan`` (a quantize or wizard run) with an auto mix at ``budget`` added: its steps
    after the plan's quantizations, from the plan's reference and importance matrix; the
    stock type of the budget made too when the plan does not make it; and the mix evaluated
    beside it, in the plan's comparison when it has one, else in a comparison of the two
    on the evaluation text (the proof). ``budget`` names a stock type: a bits-per-weight
    budget needs the reference, which a plan may only make when it runs (``automix_plan``
    takes either)."""
    if budget.stock is None:
        raise PipelineError("Add an auto mix to a run by the size of a stock type; for bits "
                            "per weight use the automix run.")
    quantized = [s for s in plan.steps if s.kind == "quantize"]
    if not quantized:
        raise PipelineError("This run makes no quantization to add an auto mix to.")
    reference = Path(quantized[0].params["source"])
    out_dir = Path(quantized[0].params["out"]).parent
    imatrix_steps = [s for s in plan.steps if s.kind == "imatrix"]
    imatrix = Path(imatrix_steps[0].params["out"]) if imatrix_steps else None
    calibration = TextSource.from_json(imatrix_steps[0].params["text"]) if imatrix_steps \
        else None
    threads = quantized[0].params.get("options", {}).get("threads")
    base = budget.stock
    mix_steps, mix = automix_steps(reference, out_dir, budget, base, imatrix=imatrix,
                                   measure=measure, calibration=calibration, threads=threads)
    added = list(mix_steps)
    stock = next((Path(s.params["out"]) for s in quantized if s.key == f"quantize:{base}"),
                 None)
    if stock is None:
        stock = plans.quantized_path(out_dir, plans.stem(reference), base, imatrix is not None)
        added.append(plans.quantize_step(reference, stock, base, imatrix=imatrix,
                                         threads=threads))
    steps = list(plan.steps)
    at = steps.index(quantized[-1]) + 1
    steps[at:at] = added
    summary = next((s for s in steps if s.kind == "summary"), None)
    if summary is None:
        steps += plans.evaluation_steps(
            reference, [(base, stock), (MIX_NAME, mix)], TextSource.evaluation(),
            chunks=plans.EVAL_LENGTHS["quick"], speed_reps=plans.EVAL_SPEED_REPS["quick"],
            threads=threads, title=f"{plans.stem(reference)}: auto mix at {budget.label} "
                                   f"vs {base}")
    else:
        evaluated = {s.key for s in steps if s.kind == "evaluate"}
        template = next(s for s in steps if s.kind == "evaluate")
        new = [plans.StepSpec(f"evaluate:{name}", "evaluate", f"Measure {name} against it",
                              {**template.params, "candidate": str(path)})
               for name, path in ((base, stock), (MIX_NAME, mix))
               if f"evaluate:{name}" not in evaluated]
        at = steps.index(summary)
        steps[at:at] = new
        candidates = [*summary.params["candidates"], *(s.key for s in new)]
        steps[at + len(new)] = plans.StepSpec(summary.key, summary.kind, summary.label,
                                              {**summary.params, "candidates": candidates})
    return plans.RunPlan(plan.kind, f"{plan.title} + auto mix at {budget.label}",
                         tuple(steps), {**plan.options, "automix": {
                             "budget": budget.to_json(), "measure": measure, "stock": base}})


def _stock_at_least(budget: am.Budget, source: Path) -> str:
    """For a bits-per-weight budget: the smallest stock type of the ladder at least as large
    (its size estimated from the dry run's bits per weight, which is the same on the
    source and its F16 reference), else the largest."""
    from app.engine.quantize import QuantizeError, QuantizeOptions, estimate_sizes

    try:
        found_sizes = estimate_sizes(source, [QuantizeOptions(q, allow_requantize=True)
                                              for q in STOCK_LADDER])
    except QuantizeError as exc:
        raise PipelineError(str(exc)) from None
    assert budget.bpw is not None
    larger = [e for e in found_sizes if e.bits_per_weight >= budget.bpw]
    return min(larger, key=lambda e: e.bits_per_weight).quant if larger else STOCK_LADDER[0]


# ------------------------------------------------------------------------------------ results

@dataclass(frozen=True)
class AutomixResult:
    """What a finished auto-mix run found: the mix beside the stock type."""

    recipe: rc.Recipe
    recipe_path: Path
    stock: Any  # app.engine.evaluate.VariantResult
    mix: Any
    stock_predicted_kld: float | None
    search_seconds: float  # sensitivity, measurement and allocation

    @property
    def better(self) -> bool:
        """Whether the mix's mean KLD is lower than the stock type's by more than their
        combined error bars."""
        return self.gain > self.error_bar

    @property
    def gain(self) -> float:
        """How much lower the mix's mean KLD is than the stock type's (negative: higher)."""
        return float(self.stock.quality.kld_mean - self.mix.quality.kld_mean)

    @property
    def error_bar(self) -> float:
        s, m = self.stock.quality.kld_error or 0.0, self.mix.quality.kld_error or 0.0
        return float((s * s + m * m) ** 0.5)

    def verdict(self) -> str:
        """One sentence that says whether the mix beat the stock type, losses included."""
        stock_name = self.recipe.base
        s, m = self.stock.quality.kld_mean, self.mix.quality.kld_mean
        size = (f"{self.mix.size / 2**20:.1f} MiB against {stock_name}'s "
                f"{self.stock.size / 2**20:.1f} MiB")
        relative = self.gain / s if s else 0.0
        if self.better:
            return (f"The auto mix beats {stock_name}: mean KLD {m:.5f} against {s:.5f} "
                    f"({relative:.0%} lower, error bar ±{self.error_bar:.5f}) at {size}.")
        if self.gain > 0:
            return (f"The auto mix is not measurably better than {stock_name}: mean KLD "
                    f"{m:.5f} against {s:.5f}, within the error bar (±{self.error_bar:.5f}), "
                    f"at {size}.")
        return (f"The auto mix is worse than {stock_name}: mean KLD {m:.5f} against {s:.5f} "
                f"({-relative:.0%} higher) at {size}. Keep {stock_name}.")

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_json(), "recipe_path": str(self.recipe_path),
                "stock": self.stock.to_json(), "mix": self.mix.to_json(),
                "stock_predicted_kld": self.stock_predicted_kld,
                "search_seconds": self.search_seconds, "better": self.better,
                "kld_gain": self.gain, "kld_error_bar": self.error_bar,
                "verdict": self.verdict(),
                "llama_quantize": self.recipe.llama_quantize_args()}


def result(store: Storage, run_id: int, stock: str | None = None) -> AutomixResult:
    """The result of a finished run with an auto mix, beside ``stock`` (by default the
    stock type the run compared it with); PipelineError when it is not finished."""
    from app.core.runs import RunStore
    from app.engine.evaluate import VariantResult

    outputs = {s.key: s.outputs or {} for s in RunStore(store).steps(run_id)}
    try:
        allocation = outputs["automix:allocate"]
        stock_key = f"evaluate:{stock}" if stock else next(
            k for k in outputs if k.startswith("evaluate:")
            and k not in ("evaluate:reference", f"evaluate:{MIX_NAME}"))
        stock_result = VariantResult.from_json(outputs[stock_key]["result"])
        mix = VariantResult.from_json(outputs[f"evaluate:{MIX_NAME}"]["result"])
    except (KeyError, StopIteration):
        raise PipelineError(f"Run {run_id} is not a finished auto-mix run.") from None
    search = sum(float(outputs.get(k, {}).get("seconds", 0.0))
                 for k in ("automix:sensitivity", "automix:measure"))
    path = Path(allocation["path"])
    try:
        recipe = rc.load(path)
    except rc.RecipeError as exc:
        raise PipelineError(str(exc)) from None
    return AutomixResult(recipe, path, stock_result, mix, allocation.get("stock_predicted_kld"),
                         search)


def saved_table(reference: Path) -> am.SensitivityTable | None:
    """The most informed sensitivity table an auto-mix run saved beside ``reference`` (full,
    then quick measurement, then the proxy), or None."""
    model = plans.stem(Path(reference))
    for suffix in ("sensitivity-full", "sensitivity-quick", "sensitivity"):
        path = Path(reference).parent / f"{model}.{suffix}.json"
        if path.exists():
            try:
                return read_table(path)
            except PipelineError:
                continue
    return None


def imatrix_beside(reference: Path) -> Path | None:
    """The importance matrix a run made for ``reference`` in its folder, if there is one."""
    path = plans.imatrix_path(Path(reference).parent, plans.stem(Path(reference)))
    return path if path.exists() else None


def measure_choices() -> tuple[str, ...]:
    """The measurement modes, cheapest first (for the CLI's and the panel's choices)."""
    return MEASURES


def stock_types() -> tuple[str, ...]:
    """The stock types a budget can be named by."""
    return tuple(q for q in STOCK_LADDER if quant_types.is_known(q))
