"""How much each tensor of a model matters: the auto mix's sensitivity table.

Two measures, the cheap one first:

- The proxy (``proxy``), no model run. Every weight matrix llama.cpp would quantize is read from
  the source (a sample of evenly spread rows for large ones, like the Layers view), quantized
  to each candidate type by ggml's own ``ggml_quantize_chunk`` with the importance matrix (what
  llama.cpp's quantizer calls for each tensor), and dequantized by ggml. The error is weighted
  per input column by the importance matrix's mean squared activation ``m``:
  ``Σ_rows Σ_j m_j (W − Ŵ)²`` estimates ``E‖(W − Ŵ)·x‖²``, the squared error the tensor adds
  to its output per token, and the same sum over ``W²`` its output's energy. Tensors the
  importance matrix has no entry for (token embeddings, output) are weighted uniformly.
- The measurement (``measure``), where the budget allows: the KL divergence against the
  reference on the calibration text when one group of tensors (a kind × a range of layers)
  alone moves from the base type (Q8_0) to its probe type, everything else staying at the
  base. Each group's change calibrates the proxy's scale for its tensors
  (``app.core.automix.with_gains``), so kinds and depths that matter more than their
  weight error says get their due. Files and evaluations are the engine's usual jobs
  (``quantize``, ``evaluate.candidate_pass``), each in its child process.

The proxy runs in a child process too (``stream_from_child``): it reads the whole model and
runs ggml's quantizers, which abort the process on a fault rather than raise.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.core import automix as am
from app.engine.child import child_errors, stream_from_child
from app.engine.events import Progress

MAX_VALUES = 1 << 16  # values read per tensor: enough for its error within ~1%, fast
BASE = "Q8_0"  # what the measurement moves groups away from: within 0.1% of F16's KLD


class SensitivityError(Exception):
    """The sensitivity could not be measured; the message says why."""


class SensitivityCancelled(SensitivityError):
    """The user cancelled."""


class _TypeTraits(ctypes.Structure):
    """ggml's ``struct ggml_type_traits`` (ggml.h), as far as ``to_float``."""

    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                             ctypes.c_int64)


class Quantizer:
    """ggml's quantize and dequantize functions for whole rows, with an importance matrix.

    ctypes releases the GIL around each call, so several threads quantize in parallel."""

    def __init__(self) -> None:
        import gguf

        from app.engine.devices import libggml

        lib = libggml()
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_void_p]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self._lib = lib
        self._gguf = gguf
        self._to_float: dict[str, Any] = {}

    def round_trip(self, rows: np.ndarray, type_name: str,
                   importance: np.ndarray | None) -> np.ndarray:
        """``rows`` (float32, n × width) quantized to ``type_name`` and back."""
        qtype = self._gguf.GGMLQuantizationType[type_name]
        block, size = self._gguf.GGML_QUANT_SIZES[qtype]
        n, width = rows.shape
        if width % block:
            raise SensitivityError(f"{type_name} cannot store rows of {width} values.")
        src = np.ascontiguousarray(rows, dtype=np.float32)
        dst = np.empty(n * width // block * size, dtype=np.uint8)
        weights = None if importance is None else np.ascontiguousarray(importance,
                                                                       dtype=np.float32)
        written = self._lib.ggml_quantize_chunk(
            int(qtype), src.ctypes.data, dst.ctypes.data, 0, n, width,
            None if weights is None else weights.ctypes.data)
        if written != dst.size:
            raise SensitivityError(f"ggml wrote {written} bytes for {type_name}, not "
                                   f"{dst.size}.")
        out = np.empty(n * width, dtype=np.float32)
        to_float = self._to_float.get(type_name)
        if to_float is None:
            traits = self._lib.ggml_get_type_traits(int(qtype)).contents
            to_float = self._to_float[type_name] = _TO_FLOAT(traits.to_float)
        to_float(dst.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n * width)
        return out.reshape(n, width)


def tensor_errors(quantizer: Quantizer, rows: np.ndarray, types: Sequence[str],
                  importance: np.ndarray | None, scale: float) -> tuple[dict[str, float], float]:
    """({type: Σ m·(W − Ŵ)²}, Σ m·W²) over ``rows``, times ``scale`` (total rows / rows
    read), with ``m`` the importance per column (uniform when None)."""
    weights = np.ones(rows.shape[1]) if importance is None else importance.astype(np.float64)
    signal = float(np.einsum("ij,ij,j->", rows, rows, weights, dtype=np.float64)) * scale
    errors = {}
    for type_name in types:
        diff = quantizer.round_trip(rows, type_name, importance) - rows
        errors[type_name] = float(np.einsum("ij,ij,j->", diff, diff, weights,
                                            dtype=np.float64)) * scale
    return errors, signal


def _proxy_in_child(send: Callable[[Any], None], source: str, imatrix: str | None,
                    quantized: list[str], types: list[str], max_values: int,
                    threads: int) -> list[am.TensorSensitivity]:
    from app.core.gguf_info import read_model_info
    from app.engine.layers import read_rows, sample_rows

    info = read_model_info(source)
    means: dict[str, np.ndarray] = {}
    if imatrix:
        from app.engine.imatrix import load

        means = load(Path(imatrix)).means()
    by_name = {t.name: t for t in info.tensors}
    quantizer = Quantizer()

    def one(name: str) -> am.TensorSensitivity:
        tensor = by_name[name]
        width, total_rows = tensor.shape[0], math.prod(tensor.shape[1:])
        picked = sample_rows(total_rows, width, max_values)
        rows = read_rows(tensor, picked)
        importance = means.get(name)
        if importance is not None and len(importance) != width:
            raise SensitivityError(f"The importance matrix's entry for {name} has "
                                   f"{len(importance)} columns, the tensor {width}: it was "
                                   "computed for another model.")
        errors, signal = tensor_errors(quantizer, rows, am.candidates_for(width, types),
                                       importance, total_rows / len(picked))
        return am.TensorSensitivity(name, tuple(tensor.shape), errors, signal,
                                    importance is not None)

    results: dict[str, am.TensorSensitivity] = {}
    send(Progress(0, len(quantized), "reading and quantizing tensors"))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {pool.submit(one, name): name for name in quantized}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            send(Progress(len(results), len(quantized), futures[future]))
    return [results[name] for name in quantized]


def _quantized_tensors(source: Path) -> tuple[list[str], int, int]:
    """Which tensors llama.cpp quantizes (its dry run for the base type), and the bytes and
    elements of those it leaves as they are."""
    from app.core.gguf_info import read_model_info
    from app.engine.quantize import QuantizeError, QuantizeOptions, estimate_size

    try:
        dry = estimate_size(source, QuantizeOptions(BASE, allow_requantize=True))
    except QuantizeError as exc:
        raise SensitivityError(str(exc)) from None
    types = dict(dry.tensor_types)
    shapes = {t.name: t.shape for t in read_model_info(source).tensors}
    quantized = [n for n, t in dry.tensor_types if t not in am.UNQUANTIZED]
    kept = [n for n in shapes if types.get(n, "F32") in am.UNQUANTIZED]
    return (quantized, sum(am.tensor_bytes(shapes[n], types.get(n, "F32")) for n in kept),
            sum(math.prod(shapes[n]) for n in kept))


def proxy(source: Path, imatrix: Path | None, *,
          types: Sequence[str] = am.DEFAULT_CANDIDATES, max_values: int = MAX_VALUES,
          threads: int | None = None, cancel: Callable[[], bool] | None = None
          ) -> Iterator[Progress | am.SensitivityTable]:
    """The proxy sensitivity of every tensor llama.cpp would quantize in ``source`` (an
    F16/BF16/F32 GGUF), for each of ``types`` its rows allow; yields Progress per tensor,
    then the SensitivityTable with the proxy's own gains (``automix.with_proxy_gains``)."""
    from app.core.gguf_info import GGUFError, read_model_info
    from app.engine.runner import default_threads

    source = Path(source)
    start = time.perf_counter()
    try:
        info = read_model_info(source)
    except GGUFError as exc:
        raise SensitivityError(str(exc)) from None
    if info.file_type not in am.UNQUANTIZED:
        raise SensitivityError(f"{source.name} is already quantized ({info.file_type}): "
                               "the sensitivity is measured on an F16, BF16 or F32 source.")
    quantized, fixed_bytes, fixed_elements = _quantized_tensors(source)
    stream = stream_from_child(_proxy_in_child, str(source), str(imatrix) if imatrix else None,
                               quantized, list(types), max_values,
                               threads or default_threads(), cancel=cancel)
    with child_errors(SensitivityError, SensitivityCancelled, cancelled_message="Cancelled.",
                      crashed="Measuring the tensors stopped unexpectedly",
                      strip=("SensitivityError: ", "ImatrixError: ")):
        tensors = yield from stream
    yield am.with_proxy_gains(am.SensitivityTable(
        source.name, info.architecture, info.n_layers, tuple(tensors), fixed_bytes,
        str(imatrix) if imatrix else None, "proxy", (), time.perf_counter() - start,
        fixed_elements))


# ------------------------------------------------------------------------------ measurement

MEASURE_PARTS = {"quick": 3, "full": 6}  # depth groups per tensor kind
MEASURE_CHUNKS = {"quick": 2, "full": 4}  # chunks of the calibration text per evaluation


def _exact(name: str) -> str:
    """A pattern llama.cpp's quantizer matches against ``name`` and nothing else."""
    return "^" + name.replace(".", r"\.") + "$"


def measure(source: Path, table: am.SensitivityTable, text: str, *, mode: str = "quick",
            imatrix: Path | None = None, work_dir: Path, n_ctx: int = 512,
            threads: int | None = None, cancel: Callable[[], bool] | None = None
            ) -> Iterator[Progress | am.GroupMeasurement | am.SensitivityTable]:
    """Measure each group's KLD change on ``text`` (the calibration text) and return
    ``table`` with its gains set; yields Progress, each GroupMeasurement as it is made,
    then the table. Probe files are written to ``work_dir`` and removed."""
    from app.engine.evaluate import EvalError, candidate_pass, reference_pass
    from app.engine.quantize import Quantized, QuantizeError, QuantizeOptions, quantize

    if mode not in MEASURE_PARTS:
        raise SensitivityError(f"The measurement is quick or full, not {mode!r}.")
    start = time.perf_counter()
    groups = am.measurement_groups(table, MEASURE_PARTS[mode])
    chunks = MEASURE_CHUNKS[mode]
    total = len(groups) + 2
    by_name = table.by_name()
    options: dict[str, Any] = {"n_ctx": n_ctx, "max_chunks": chunks, "speed_reps": 0,
                               "threads": threads, "cancel": cancel}
    work_dir.mkdir(parents=True, exist_ok=True)
    probe_file = work_dir / f".{source.stem}.automix-probe.gguf"

    def kld(overrides: tuple[tuple[str, str], ...], label: str, done: int
            ) -> Iterator[Progress | tuple[float, float]]:
        quant = QuantizeOptions(BASE, overrides=overrides, threads=threads,
                                imatrix=str(imatrix) if imatrix else None)
        try:
            for event in quantize(source, probe_file, quant, cancel):
                if isinstance(event, Quantized):
                    yield Progress(done, total, f"{label}: evaluating")
            result = yield from _passthrough(
                candidate_pass(source, probe_file, text, **options), done, total, label)
        finally:
            with contextlib.suppress(FileNotFoundError):
                probe_file.unlink()
        yield (result.quality.kld_mean or 0.0, result.quality.kld_error or 0.0)

    measurements: list[am.GroupMeasurement] = []
    try:
        yield Progress(0, total, "the reference on the calibration text")
        yield from _passthrough(reference_pass(source, text, **options), 0, total, "reference")
        base = 0.0
        for event in kld((), f"every tensor at {BASE}", 1):
            if isinstance(event, tuple):
                base = event[0]
            else:
                yield event
        for i, (group, names) in enumerate(groups.items(), start=2):
            probes = {n: table.probe_type(by_name[n]) for n in names}
            overrides = tuple((_exact(n), probes[n]) for n in names)
            for event in kld(overrides, group, i):
                if isinstance(event, tuple):
                    m = am.GroupMeasurement(group, tuple(names), probes, event[0], base,
                                            event[1])
                    measurements.append(m)
                    yield m
                else:
                    yield event
            yield Progress(i, total, f"{group}: ΔKLD {measurements[-1].delta:+.5f}")
    except (QuantizeError, EvalError) as exc:
        cancelled = type(exc).__name__.endswith("Cancelled")
        raise (SensitivityCancelled if cancelled else SensitivityError)(str(exc)) from None
    yield replace(am.with_gains(table, measurements, mode),
                  seconds=table.seconds + time.perf_counter() - start)


def _passthrough(job: Any, done: int, total: int, label: str) -> Any:
    """Run an evaluation generator, turning its progress into the measurement's; return
    its value."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress) and event.total:
            yield Progress(done, total, f"{label}: {event.done}/{event.total}")
