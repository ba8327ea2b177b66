"""What quantization does inside a model, tensor by tensor: the layer view's numbers.

For a candidate and its reference (two GGUF files of the same model), every weight matrix of
both is dequantized with the ``gguf`` package (numpy; llama.cpp's own block formats) and
compared: the relative error ``‖W_cand − W_ref‖ / ‖W_ref‖`` (Frobenius norms) per tensor, laid out
by layer × tensor kind for the heatmap; and for one tensor, the histogram of the reference's
values beside the candidate's (quantization collapses values onto a few levels per block), the
distribution of the error, and how many distinct values a block of 32 weights keeps.

Large tensors are compared on a sample of rows: at most ``max_values`` values per tensor (default
about a million), rows spread evenly through the tensor (systematic, so the same rows every time).
A report says when it was sampled. One-dimensional tensors (norms, biases) are left out: they stay
F32 in every quantization.

The work runs in a child process (``tensor_errors``, ``tensor_detail``) like the rest of the
engine: a damaged file or memory exhaustion there ends the job, not the app.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.gguf_info import GGUFError, TensorInfo, read_model_info
from app.engine.child import call_in_child, child_errors, stream_from_child
from app.engine.events import Progress

MAX_VALUES = 1 << 20
BLOCK = 32  # values per block for the "distinct levels" count (ggml's smallest block)
# Heatmap columns in the order a transformer block runs them; other kinds follow by name.
KIND_ORDER = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up",
              "ffn_down", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight)?$")


class LayerError(Exception):
    """The comparison cannot be made; the message says why."""


class LayerCancelled(LayerError):
    """The user cancelled."""


@dataclass(frozen=True)
class TensorError:
    """One weight matrix compared: its types, relative error, and how much of it was read."""

    name: str
    layer: int | None
    kind: str
    reference_type: str
    candidate_type: str
    rel_error: float
    rows: int
    total_rows: int

    @property
    def sampled(self) -> bool:
        return self.rows < self.total_rows


@dataclass(frozen=True)
class LayerReport:
    reference: str
    candidate: str
    tensors: tuple[TensorError, ...]
    max_values: int
    skipped: tuple[str, ...] = ()  # tensors whose type the gguf package cannot dequantize

    @property
    def sampled(self) -> bool:
        return any(t.sampled for t in self.tensors)

    def grid(self) -> tuple[list[int], list[str], np.ndarray]:
        """(layers, kinds, errors) for the heatmap: errors[i, j] is layer i's tensor of kind j,
        NaN where a layer has no such tensor."""
        blocks = [t for t in self.tensors if t.layer is not None]
        layers = sorted({t.layer for t in blocks if t.layer is not None})
        found = {t.kind for t in blocks}
        kinds = [k for k in KIND_ORDER if k in found] + sorted(found - set(KIND_ORDER))
        values = np.full((len(layers), len(kinds)), np.nan)
        row, col = {n: i for i, n in enumerate(layers)}, {k: j for j, k in enumerate(kinds)}
        for t in blocks:
            assert t.layer is not None
            values[row[t.layer], col[t.kind]] = t.rel_error
        return layers, kinds, values

    def outside_blocks(self) -> list[TensorError]:
        """Tensors outside the repeated blocks (token embedding, output)."""
        return [t for t in self.tensors if t.layer is None]

    def worst(self, n: int = 5) -> list[TensorError]:
        return sorted(self.tensors, key=lambda t: t.rel_error, reverse=True)[:n]


@dataclass(frozen=True)
class TensorDetail:
    """One tensor, reference against candidate, for the histograms."""

    name: str
    reference_type: str
    candidate_type: str
    edges: np.ndarray  # shared bin edges for both value histograms
    reference_counts: np.ndarray
    candidate_counts: np.ndarray
    error_edges: np.ndarray
    error_counts: np.ndarray
    rel_error: float
    rms_error: float
    max_abs_error: float
    reference_levels: float  # mean distinct values per block of BLOCK weights
    candidate_levels: float
    rows: int
    total_rows: int

    @property
    def sampled(self) -> bool:
        return self.rows < self.total_rows


def kind_of(name: str) -> tuple[int | None, str]:
    """('blk.3.attn_q.weight') → (3, 'attn_q'); ('output.weight') → (None, 'output')."""
    match = _BLOCK_NAME.match(name)
    if match:
        return int(match[1]), match[2]
    return None, name.removesuffix(".weight")


def sample_rows(total_rows: int, row_length: int, max_values: int) -> np.ndarray:
    """Indices of the rows to read: all of them, or an evenly spread subset of at most
    ``max_values`` values (at least one row)."""
    keep = max(1, min(total_rows, max_values // max(row_length, 1)))
    if keep >= total_rows:
        return np.arange(total_rows)
    return np.unique(np.linspace(0, total_rows - 1, keep).round().astype(np.int64))


def read_rows(tensor: TensorInfo, rows: np.ndarray) -> np.ndarray:
    """Rows of a tensor, dequantized to float32: shape (len(rows), row length)."""
    import gguf

    assert tensor.file is not None
    total_rows = math.prod(tensor.shape[1:])
    row_bytes = tensor.n_bytes // total_rows
    raw = np.memmap(tensor.file, dtype=np.uint8, mode="r", offset=tensor.offset,
                    shape=(total_rows, row_bytes))
    picked = np.ascontiguousarray(raw[rows])
    del raw
    qtype = gguf.GGMLQuantizationType[tensor.type_name]
    values = gguf.quants.dequantize(picked, qtype)
    return np.asarray(values, dtype=np.float32).reshape(len(rows), tensor.shape[0])


def _pairs(reference: Path, candidate: Path) -> list[tuple[TensorInfo, TensorInfo]]:
    """The weight matrices of both files, paired by name; LayerError if they are not the
    same model."""
    try:
        ref, cand = read_model_info(reference), read_model_info(candidate)
    except GGUFError as exc:
        raise LayerError(str(exc)) from None
    theirs = {t.name: t for t in cand.tensors}
    pairs = []
    for t in ref.tensors:
        if len(t.shape) < 2:
            continue
        other = theirs.get(t.name)
        if other is None or other.shape != t.shape:
            raise LayerError(f"{candidate.name} is not a quantization of {reference.name}: "
                             f"tensor {t.name} is missing or has another shape.")
        pairs.append((t, other))
    if not pairs:
        raise LayerError(f"{reference.name} has no weight matrices to compare.")
    return pairs


def _levels(values: np.ndarray) -> float:
    """Mean number of distinct values per block of BLOCK consecutive weights."""
    flat = values.reshape(-1)
    usable = flat[: flat.size // BLOCK * BLOCK].reshape(-1, BLOCK)
    if usable.size == 0:
        return float(len(np.unique(flat)))
    ordered = np.sort(usable, axis=1)
    return float(((np.diff(ordered, axis=1) != 0).sum(axis=1) + 1).mean())


def _compare(ref: TensorInfo, cand: TensorInfo, max_values: int
             ) -> tuple[np.ndarray, np.ndarray, int, int]:
    total_rows = math.prod(ref.shape[1:])
    rows = sample_rows(total_rows, ref.shape[0], max_values)
    return read_rows(ref, rows), read_rows(cand, rows), len(rows), total_rows


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a))
    diff = float(np.linalg.norm(b - a))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def _child_errors() -> contextlib.AbstractContextManager[None]:
    """A child's outcome as this module's errors (one wording for both entry points)."""
    return child_errors(LayerError, LayerCancelled, cancelled_message="Cancelled.",
                        crashed="The comparison stopped unexpectedly", strip=("LayerError: ",))


def _errors_in_child(send: Callable[[Any], None], reference: str, candidate: str,
                     max_values: int) -> LayerReport:
    pairs = _pairs(Path(reference), Path(candidate))
    results, skipped = [], []
    for i, (ref, cand) in enumerate(pairs):
        try:
            a, b, rows, total_rows = _compare(ref, cand, max_values)
        except NotImplementedError:  # a type the gguf package cannot dequantize
            skipped.append(f"{ref.name} ({ref.type_name}/{cand.type_name})")
            continue
        layer, kind = kind_of(ref.name)
        results.append(TensorError(ref.name, layer, kind, ref.type_name, cand.type_name,
                                   _rel_error(a, b), rows, total_rows))
        send(Progress(i + 1, len(pairs), ref.name))
    return LayerReport(reference, candidate, tuple(results), max_values, tuple(skipped))


def tensor_errors(reference: Path, candidate: Path, max_values: int = MAX_VALUES,
                  cancel: Callable[[], bool] | None = None) -> Iterator[Progress | LayerReport]:
    """Compare every weight matrix; yields Progress per tensor, then the LayerReport."""
    stream = stream_from_child(_errors_in_child, str(reference), str(candidate), max_values,
                               cancel=cancel)
    with _child_errors():
        while True:
            try:
                yield next(stream)
            except StopIteration as stop:
                yield stop.value
                return


def _symmetric_edges(values: np.ndarray, bins: int) -> np.ndarray:
    span = float(np.quantile(np.abs(values), 0.999)) or float(np.abs(values).max()) or 1.0
    return np.linspace(-span, span, bins + 1)


def _detail_in_child(reference: str, candidate: str, name: str, max_values: int,
                     bins: int) -> TensorDetail:
    pairs = {ref.name: (ref, cand) for ref, cand in _pairs(Path(reference), Path(candidate))}
    if name not in pairs:
        raise LayerError(f"{name} is not a weight matrix of {Path(reference).name}.")
    ref, cand = pairs[name]
    try:
        a, b, rows, total_rows = _compare(ref, cand, max_values)
    except NotImplementedError:
        raise LayerError(f"{name}'s type ({ref.type_name} or {cand.type_name}) cannot be "
                         "read by this version of the gguf package.") from None
    # Value range: the reference's 0.05 %–99.95 % quantiles, so that a few outliers do not
    # squeeze every bar into one; values beyond land in the outermost bars.
    low, high = (float(x) for x in np.quantile(a, [0.0005, 0.9995]))
    if high <= low:
        low, high = low - 1.0, high + 1.0
    edges = np.linspace(low, high, bins + 1)
    error = b - a
    err_edges = _symmetric_edges(error, bins)

    def counts(values: np.ndarray, e: np.ndarray) -> np.ndarray:
        return np.histogram(np.clip(values, e[0], e[-1]), bins=e)[0]

    return TensorDetail(
        name, ref.type_name, cand.type_name, edges, counts(a, edges), counts(b, edges),
        err_edges, counts(error, err_edges), _rel_error(a, b),
        float(np.sqrt(np.mean(np.square(error)))), float(np.abs(error).max()),
        _levels(a), _levels(b), rows, total_rows)


def tensor_detail(reference: Path, candidate: Path, name: str, max_values: int = MAX_VALUES,
                  bins: int = 80) -> TensorDetail:
    """Histograms of one tensor: reference values, candidate values, and the error."""
    with _child_errors():
        return call_in_child(_detail_in_child, str(reference), str(candidate), name,
                             max_values, bins, timeout=600)
