"""The kinds of step a run is made of, each around one engine or hub job.

A kind knows four things about a step's parameters (plain JSON, stored with the step):
- ``inputs``: the files whose contents the result depends on (they enter its fingerprint);
- ``outputs``: the files it writes (checked before its result is reused; their stale temporary
  files, left by a process that was killed, are removed before it runs again);
- ``run``: the job itself, a generator of engine events returning the step's outputs (JSON);
- ``predict``: the seconds it should take here, from ``Rates``, for the run's ETA.
Engine events pass through to the runner (Progress, warnings); the runner turns them into
pipeline events and the engine's errors into the run's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.storage import Storage
from app.pipeline.placement import placement
from app.pipeline.texts import TextSource

StepRun = Generator[Any, None, dict[str, Any]]


@dataclass(frozen=True)
class Rates:
    """How fast this machine does each kind of work, for predictions. The defaults are this
    project's measurements on a 2-core x86 VM (SmolLM2-135M); a run's options may carry rates
    measured on the model at hand (``app.pipeline.predict``), which replace them."""

    prompt_tokens_per_s: float = 600.0  # llama.cpp prompt processing, batch 512
    generation_tokens_per_s: float = 100.0
    quantize_bytes_per_s: float = 370e6  # of source read, for a legacy type (see Quantize)
    dequantize_bytes_per_s: float = 30e6  # of quantized source read
    convert_bytes_per_s: float = 60e6
    download_bytes_per_s: float = 20e6
    load_seconds: float = 0.3

    def to_json(self) -> dict[str, float]:
        return dict(self.__dict__)

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> Rates:
        known = set(Rates.__dataclass_fields__)
        return Rates(**{k: float(v) for k, v in (data or {}).items() if k in known})


@dataclass
class StepContext:
    """What a running step may use besides its parameters."""

    run_id: int
    cancel: Callable[[], bool]
    store: Storage  # the runner's connection, on the runner's thread
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # earlier steps, by key


def _size(path: str | None, hint: float = 0.0) -> float:
    if path:
        with contextlib.suppress(OSError):
            return float(Path(path).stat().st_size)
    return hint


def _stale(out: Path) -> list[Path]:
    """Temporary files the engine writes beside ``out`` while it works."""
    return [out.with_name(f".{out.name}.part"), *out.parent.glob(f".{out.name}.*.part")]


class Kind:
    """A kind of step. Subclasses set ``name`` and override what differs."""

    name = ""

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        return []

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["out"])] if params.get("out") else []

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        """Inputs that are not files (a text's hash, the llama.cpp build)."""
        return {}

    def stale(self, params: dict[str, Any]) -> list[Path]:
        return [p for out in self.outputs(params) for p in _stale(out)]

    def still_valid(self, outputs: dict[str, Any], store: Storage) -> bool:
        """Whether stored outputs can still stand for a new run of the step (their files are
        checked by the runner; kinds with outputs outside files check those here)."""
        return True

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        raise NotImplementedError

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return 1.0


def _build() -> dict[str, Any]:
    from app.engine.evaluate import llama_build

    return {"build": llama_build()}


class Dequantize(Kind):
    """An F16 copy of an already quantized GGUF: the reference the others are measured against."""

    name = "dequantize"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["source"])]

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.dequantize import Dequantized, dequantize

        result: dict[str, Any] = {}
        for event in dequantize(Path(params["source"]), Path(params["out"]),
                                params.get("type", "F16"), cancel=ctx.cancel):
            if isinstance(event, Dequantized):
                result = {"path": str(event.path), "size": event.size}
            else:
                yield event
        return result

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return _size(params["source"], 1e8) / rates.dequantize_bytes_per_s + rates.load_seconds


class Convert(Kind):
    """A Hugging Face checkpoint folder to GGUF with llama.cpp's converter."""

    name = "convert"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        folder = Path(params["folder"])
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.convert import Converted, convert

        result: dict[str, Any] = {}
        for event in convert(Path(params["folder"]), Path(params["out"]),
                             params.get("type", "F16"), cancel=ctx.cancel):
            if isinstance(event, Converted):
                result = {"path": str(event.path), "size": event.size,
                          "seconds": event.seconds}
            else:
                yield event
        return result

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        folder = Path(params["folder"])
        size = sum(_size(str(p)) for p in folder.glob("*.safetensors")) if folder.is_dir() \
            else float(params.get("expected_bytes", 1e9))
        return size / rates.convert_bytes_per_s + 5.0  # torch and the converter start


class Download(Kind):
    """GGUF files (all parts of a split model) from a Hugging Face repo, verified."""

    name = "download"

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        from app.hub.download import target_path

        return [target_path(Path(params["dest"]), params["repo_id"], f) for f in params["files"]]

    def stale(self, params: dict[str, Any]) -> list[Path]:
        return []  # a partial download is resumed, not removed

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        import threading

        from app.engine.events import Progress
        from app.hub import download as dl
        from app.hub.token import get_token

        token = get_token()
        stop = threading.Event()
        remotes = [dl.remote_file(params["repo_id"], f, revision=params.get("revision", "main"),
                                  token=token, endpoint=params.get("endpoint"))
                   for f in params["files"]]
        paths = []
        for event in dl.download_files(remotes, Path(params["dest"]), token=token, cancel=stop):
            if ctx.cancel():
                stop.set()
            if isinstance(event, dl.Progress):
                yield Progress(event.done, event.total, event.message)
            else:
                paths.append(str(event.path))
        return {"path": paths[0], "paths": paths, "size": sum(r.size for r in remotes)}

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return float(params.get("expected_bytes", 1e9)) / rates.download_bytes_per_s


class Checkpoint(Kind):
    """The files llama.cpp's converter reads, from a Hugging Face repo."""

    name = "checkpoint"

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return []  # checked by still_valid: the folder and its config

    def stale(self, params: dict[str, Any]) -> list[Path]:
        return []

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        import threading

        from app.engine.events import Progress
        from app.hub import checkpoint as ck
        from app.hub.token import get_token

        stop = threading.Event()
        folder = ""
        for event in ck.fetch_checkpoint(params["repo_id"], Path(params["dest"]),
                                         endpoint=params.get("endpoint"), token=get_token(),
                                         cancel=stop):
            if ctx.cancel():
                stop.set()
            if isinstance(event, ck.Checkpoint):
                folder = str(event.folder)
            else:
                yield Progress(event.done, event.total, event.message)
        return {"folder": folder}

    def still_valid(self, outputs: dict[str, Any], store: Storage) -> bool:
        return (Path(outputs.get("folder", "")) / "config.json").is_file()

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return float(params.get("expected_bytes", 1e9)) / rates.download_bytes_per_s


class Imatrix(Kind):
    """An importance matrix of the reference from the calibration text."""

    name = "imatrix"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["model"])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"text": TextSource.from_json(params["text"]).sha256(), **_build()}

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.imatrix import Computed, compute

        text = TextSource.from_json(params["text"])
        layers, servers = placement(Path(params["model"]), params.get("n_ctx", 512))
        result: dict[str, Any] = {}
        for event in compute(Path(params["model"]), text.read(), Path(params["out"]),
                             n_ctx=params.get("n_ctx", 512), max_chunks=params.get("chunks"),
                             threads=params.get("threads"), dataset=text.name,
                             cancel=ctx.cancel, n_gpu_layers=layers, rpc_servers=servers):
            if isinstance(event, Computed):
                result = {"path": str(event.path), "chunks": event.chunks,
                          "tokens": event.tokens, "tensors": event.tensors,
                          "seconds": event.seconds}
            else:
                yield event
        return result

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        tokens = float(params.get("expected_tokens", 20_000))
        # collecting the statistics costs about a third on top of plain prompt processing
        return tokens / rates.prompt_tokens_per_s * 1.35 + rates.load_seconds


class Quantize(Kind):
    """One target type with llama.cpp's quantizer."""

    name = "quantize"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        imatrix = params["options"].get("imatrix")
        return [Path(params["source"]), *([Path(imatrix)] if imatrix else [])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return _build()

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.quantize import Quantized, QuantizeOptions, TensorType, quantize

        options = dict(params["options"])
        options["overrides"] = tuple(tuple(pair) for pair in options.get("overrides", ()))
        result: dict[str, Any] = {}
        for event in quantize(Path(params["source"]), Path(params["out"]),
                              QuantizeOptions(**options), ctx.cancel):
            if isinstance(event, Quantized):
                result = {"path": str(event.path), "quant": event.quant, "size": event.size,
                          "seconds": event.seconds}
            elif not isinstance(event, TensorType):
                yield event
        return result

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        source = _size(params["source"], float(params.get("expected_source_bytes", 1e8)))
        return source / rates.quantize_bytes_per_s * _quantize_cost(
            params["options"]["quant"]) + rates.load_seconds


def _quantize_cost(quant: str) -> float:
    """How much slower than a legacy type (Q8_0, Q4_0) a type quantizes, per source byte: the
    K-quants search scales per sub-block, the I-quants search a lattice for every group
    (measured on SmolLM2 F16 here: Q8_0 0.7 s, Q4_K_M 1.3 s, IQ4_XS 13 s, IQ3_M 16 s)."""
    if quant.startswith("IQ"):
        return 12.0
    return 1.8 if "_K" in quant else 1.0


def _eval_options(params: dict[str, Any], ctx: StepContext, model: str) -> dict[str, Any]:
    layers, servers = placement(Path(model), params.get("n_ctx", 512))
    return {"n_ctx": params.get("n_ctx", 512), "max_chunks": params.get("chunks"),
            "speed_reps": params.get("speed_reps", 3), "threads": params.get("threads"),
            "cancel": ctx.cancel, "n_gpu_layers": layers, "rpc_servers": servers}


def _eval_seconds(params: dict[str, Any], rates: Rates, reference: bool) -> float:
    n_ctx = float(params.get("n_ctx", 512))
    chunks = float(params.get("chunks") or params.get("expected_chunks") or 8)
    scoring = chunks * n_ctx / rates.prompt_tokens_per_s * (1.3 if reference else 1.05)
    speed = float(params.get("speed_reps", 3)) * (512 / rates.prompt_tokens_per_s
                                           + 128 / rates.generation_tokens_per_s)
    return rates.load_seconds * 2 + scoring + speed


class EvaluateReference(Kind):
    """The reference's perplexity and its cached token distributions."""

    name = "evaluate_reference"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["reference"])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"text": TextSource.from_json(params["text"]).sha256(), **_build()}

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.evaluate import reference_pass

        text = TextSource.from_json(params["text"]).read()
        result, cached = yield from reference_pass(
            Path(params["reference"]), text, **_eval_options(params, ctx, params["reference"]))
        return {"result": result.to_json(), "from_cache": cached}

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return _eval_seconds(params, rates, reference=True)


class Evaluate(Kind):
    """One candidate against the reference: PPL, KLD, same top token, speed, memory."""

    name = "evaluate"

    def inputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["reference"]), Path(params["candidate"])]

    def extra_fingerprint(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"text": TextSource.from_json(params["text"]).sha256(), **_build()}

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.evaluate import candidate_pass

        text = TextSource.from_json(params["text"]).read()
        result = yield from candidate_pass(Path(params["reference"]), Path(params["candidate"]),
                                           text, **_eval_options(params, ctx,
                                                                 params["candidate"]))
        return {"result": result.to_json()}

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return _eval_seconds(params, rates, reference=False)


class Summary(Kind):
    """The comparison of the evaluated variants, stored with the other evaluations."""

    name = "summary"

    def run(self, params: dict[str, Any], ctx: StepContext) -> StepRun:
        from app.engine.evaluate import VariantResult, assemble

        def result(key: str) -> VariantResult:
            return VariantResult.from_json(ctx.outputs[key]["result"])

        text = TextSource.from_json(params["text"])
        evaluation = assemble(result(params["reference"]),
                              [result(k) for k in params["candidates"]], text.read(),
                              text_name=text.name, n_ctx=params.get("n_ctx", 512))
        evaluation_id = ctx.store.add_evaluation(params["title"], evaluation.to_json())
        return {"evaluation_id": evaluation_id}
        yield  # a generator like the others, with nothing to report

    def still_valid(self, outputs: dict[str, Any], store: Storage) -> bool:
        try:
            store.evaluation(int(outputs["evaluation_id"]))
        except (KeyError, ValueError):
            return False
        return True

    def predict(self, params: dict[str, Any], rates: Rates) -> float:
        return 0.1


KINDS: dict[str, Kind] = {k.name: k for k in (
    Dequantize(), Convert(), Download(), Checkpoint(), Imatrix(), Quantize(),
    EvaluateReference(), Evaluate(), Summary())}
# The auto mix's kinds subclass Kind: its module adds them to KINDS when imported, which works
# whichever of the two modules is imported first.
import app.pipeline.automix  # noqa: E402, F401


def cancelled_errors() -> tuple[type[BaseException], ...]:
    """The engine's and hub's "cancelled" errors: a step that raises one was cancelled."""
    from app.engine.convert import ConvertCancelled
    from app.engine.dequantize import DequantizeCancelled
    from app.engine.evaluate import EvalCancelled
    from app.engine.imatrix import ImatrixCancelled
    from app.engine.quantize import QuantizeCancelled
    from app.hub.errors import Cancelled

    return (ConvertCancelled, DequantizeCancelled, EvalCancelled, ImatrixCancelled,
            QuantizeCancelled, Cancelled)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The errors engine and hub jobs raise with a message meant for the user (anything else
    is a defect, logged with its traceback)."""
    from app.engine.convert import ConvertError
    from app.engine.dequantize import DequantizeError
    from app.engine.evaluate import EvalError
    from app.engine.imatrix import ImatrixError
    from app.engine.quantize import QuantizeError
    from app.hub.errors import HubError

    return (ConvertError, DequantizeError, EvalError, ImatrixError, QuantizeError, HubError)
