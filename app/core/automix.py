"""Auto mix: a type per tensor chosen by how much each tensor matters, within a size budget.

llama.cpp's stock types apply one recipe to every model (Q4_K_M: Q6_K for a fixed share of the
attn_v and ffn_down layers, Q4_K elsewhere). An auto mix measures the model at hand instead:

- ``TensorSensitivity``: for one tensor, the proxy error of each candidate type, the
  importance-weighted squared error of its output ``E‖(W − Ŵ)·x‖²`` relative to ``E‖W·x‖²``
  (``x`` distributed as the importance matrix says: mean squared activation per input column),
  and a gain that turns it into a predicted KL divergence. The gain is measured per group of
  tensors (``app.engine.sensitivity``); without a measurement it is 1 for every tensor.
- ``allocate``: the type per tensor that minimises the predicted loss (the sum over tensors)
  within a number of bytes: a greedy walk up each tensor's lower convex hull of (bytes, loss),
  steepest first, then a fill of what is left.
- ``fallback_type``: llama.cpp's own substitution when a type's block does not divide a
  tensor's rows (SmolLM2's 576-wide rows take no K-quant), so that sizes are counted the way
  llama.cpp will write them.

Everything here is pure: the engine measures, the pipeline runs the steps, and the recipe that
the allocation becomes (``app.core.recipe``) is what is saved and reused.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gguf

# Candidate types, lowest bits first. K- and I-quants need rows that are a multiple of 256
# values; the 32-value block types are what narrower rows can take. IQ2/IQ1 types are left out
# by default: without very large models they cost more quality than their size saves, and
# quantizing them is slow. Q2_0/Q1_0/MXFP4 measured far worse per bit here (random weights:
# 72%, 60%, 12% relative error against Q4_0's 8%).
DEFAULT_CANDIDATES = ("Q2_K", "IQ3_XXS", "Q3_K", "IQ3_S", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_K",
                      "Q4_1", "Q5_0", "Q5_K", "Q5_1", "Q6_K", "Q8_0")
# What llama.cpp stores instead when a type's block does not divide a tensor's rows
# (llama-quant.cpp; checked against this build's dry run in tests/unit/test_automix.py).
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0",
             "Q5_K": "Q5_1", "Q6_K": "Q8_0", **dict.fromkeys(
                 ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"),
                 "IQ4_NL")}
UNQUANTIZED = ("F32", "F16", "BF16")
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight)?$")
# Heatmap columns in the order a transformer block runs them (app.engine.layers.KIND_ORDER).
KIND_ORDER = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up",
              "ffn_down", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


class AutomixError(Exception):
    """An auto mix cannot be made as asked; the message says why."""


def block_size(type_name: str) -> int:
    """Values per block of a ggml type (1 for F16/F32)."""
    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]][0])


def bits_per_weight(type_name: str) -> float:
    """Stored bits per value of a ggml type."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    return size * 8 / block


def fallback_type(type_name: str, width: int) -> str:
    """The type llama.cpp stores a tensor with rows of ``width`` values in when asked for
    ``type_name``: the type itself when its block divides the rows, else llama.cpp's
    substitute (Q4_K → Q5_0, Q6_K → Q8_0, IQ3_S → IQ4_NL, …), else F16."""
    name = type_name.upper()
    if width % block_size(name) == 0:
        return name
    substitute = _FALLBACK.get(name)
    if substitute is None and name not in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL",
                                           "MXFP4", "Q2_0"):
        raise AutomixError(f"llama.cpp cannot store a tensor with rows of {width} values as "
                           f"{name}, and has no substitute for it.")
    if substitute is not None and width % block_size(substitute) == 0:
        return substitute
    return "F16"


def tensor_bytes(shape: Sequence[int], type_name: str) -> int:
    """Bytes of a tensor of ``shape`` (ggml order) stored as ``type_name``."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    return math.prod(shape) // block * size


def candidates_for(width: int, types: Iterable[str] = DEFAULT_CANDIDATES) -> list[str]:
    """The types of ``types`` a tensor with rows of ``width`` values can be stored in as they
    are (no fallback): a choice between them is a real choice."""
    return [t for t in types if width % block_size(t) == 0]


def tensor_kind(name: str) -> tuple[int | None, str]:
    """('blk.3.attn_q.weight') → (3, 'attn_q'); ('token_embd.weight') → (None, 'token_embd')."""
    match = _BLOCK_NAME.match(name)
    if match:
        return int(match[1]), match[2]
    return None, name.removesuffix(".weight")


# ------------------------------------------------------------------------------- sensitivity

@dataclass(frozen=True)
class TensorSensitivity:
    """One quantized tensor: the proxy error per candidate type, and its gain.

    ``errors[t]`` is ``E‖(W − Ŵ_t)·x‖²`` for the whole tensor (estimated from sampled rows),
    ``signal`` is ``E‖W·x‖²``, both weighted per input column by the importance matrix
    (``weighted``) or uniformly when it has no entry for the tensor (token embeddings,
    output). ``gain`` turns the relative error into a predicted KL divergence: measured for
    the tensor's ``group`` when a measurement ran, else 1."""

    name: str
    shape: tuple[int, ...]
    errors: dict[str, float]
    signal: float
    weighted: bool
    gain: float = 1.0
    group: str = ""

    @property
    def layer(self) -> int | None:
        return tensor_kind(self.name)[0]

    @property
    def kind(self) -> str:
        return tensor_kind(self.name)[1]

    @property
    def width(self) -> int:
        return self.shape[0]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def relative(self, type_name: str) -> float:
        """The relative importance-weighted error of the tensor's output at ``type_name``."""
        return self.errors[type_name] / self.signal if self.signal > 0 else 0.0

    def loss(self, type_name: str) -> float:
        """Predicted KL divergence added by storing this tensor as ``type_name``."""
        return self.gain * self.relative(type_name)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "errors": self.errors,
                "signal": self.signal, "weighted": self.weighted, "gain": self.gain,
                "group": self.group}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> TensorSensitivity:
        return TensorSensitivity(str(data["name"]), tuple(int(n) for n in data["shape"]),
                                 {str(k): float(v) for k, v in data["errors"].items()},
                                 float(data["signal"]), bool(data["weighted"]),
                                 float(data.get("gain", 1.0)), str(data.get("group", "")))


@dataclass(frozen=True)
class GroupMeasurement:
    """A measured KL divergence change on the calibration text: the tensors of ``group``
    moved alone from the base type to their probe types."""

    group: str
    tensors: tuple[str, ...]
    probes: dict[str, str]  # tensor → the type it was moved to
    kld: float  # mean KLD against the reference with the group moved
    base_kld: float  # mean KLD with every tensor at the base type
    kld_error: float = 0.0

    @property
    def delta(self) -> float:
        return self.kld - self.base_kld

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "tensors": list(self.tensors), "probes": self.probes,
                "kld": self.kld, "base_kld": self.base_kld, "kld_error": self.kld_error}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> GroupMeasurement:
        return GroupMeasurement(str(data["group"]), tuple(data["tensors"]),
                                dict(data["probes"]), float(data["kld"]),
                                float(data["base_kld"]), float(data.get("kld_error", 0.0)))


@dataclass(frozen=True)
class SensitivityTable:
    """Every quantized tensor of one model with its sensitivity, and the bytes of the rest."""

    model: str
    architecture: str
    n_layers: int
    tensors: tuple[TensorSensitivity, ...]
    fixed_bytes: int  # tensors llama.cpp does not quantize (norms, biases)
    imatrix: str | None = None
    measure: str = "proxy"  # "proxy" (no model run), "quick" or "full"
    measurements: tuple[GroupMeasurement, ...] = ()
    seconds: float = 0.0
    fixed_elements: int = 0

    @property
    def n_elements(self) -> int:
        """Elements of every tensor, quantized or not: what llama.cpp's bits per weight
        divide the tensor bytes by."""
        return sum(t.n_elements for t in self.tensors) + self.fixed_elements

    def by_name(self) -> dict[str, TensorSensitivity]:
        return {t.name: t for t in self.tensors}

    def probe_type(self, tensor: TensorSensitivity) -> str:
        """The type a measurement moves ``tensor`` to (see ``probe_for``)."""
        for m in self.measurements:
            if tensor.name in m.probes:
                return m.probes[tensor.name]
        return probe_for(tensor)

    def grid(self, type_name: str | None = None
             ) -> tuple[list[int], list[str], list[list[float]]]:
        """(layers, kinds, values) for the Layers view's sensitivity heatmap: values[i][j] is
        the predicted KLD added when layer i's tensor of kind j alone is stored as
        ``type_name`` (default: its probe type), NaN where a layer has no such tensor or the
        type does not apply. Tensors outside the blocks are in ``outside_blocks``."""
        blocks = [t for t in self.tensors if t.layer is not None]
        layers = sorted({t.layer for t in blocks if t.layer is not None})
        found = {t.kind for t in blocks}
        kinds = [k for k in KIND_ORDER if k in found] + sorted(found - set(KIND_ORDER))
        row, col = {n: i for i, n in enumerate(layers)}, {k: j for j, k in enumerate(kinds)}
        values = [[math.nan] * len(kinds) for _ in layers]
        for t in blocks:
            assert t.layer is not None
            values[row[t.layer]][col[t.kind]] = self._value(t, type_name)
        return layers, kinds, values

    def outside_blocks(self, type_name: str | None = None) -> list[tuple[str, float]]:
        """(name, predicted KLD) of the tensors outside the blocks (token embedding, output),
        on the same scale as ``grid``."""
        return [(t.name, self._value(t, type_name)) for t in self.tensors if t.layer is None]

    def _value(self, t: TensorSensitivity, type_name: str | None) -> float:
        chosen = type_name or self.probe_type(t)
        return t.loss(chosen) if chosen in t.errors else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "model": self.model, "architecture": self.architecture,
                "n_layers": self.n_layers, "tensors": [t.to_json() for t in self.tensors],
                "fixed_bytes": self.fixed_bytes, "imatrix": self.imatrix,
                "measure": self.measure,
                "measurements": [m.to_json() for m in self.measurements],
                "seconds": self.seconds, "fixed_elements": self.fixed_elements}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> SensitivityTable:
        if data.get("format") != 1:
            raise AutomixError("This sensitivity table was written by another version of "
                               "QuantDesk; measure the model again.")
        return SensitivityTable(
            str(data["model"]), str(data["architecture"]), int(data["n_layers"]),
            tuple(TensorSensitivity.from_json(t) for t in data["tensors"]),
            int(data["fixed_bytes"]), data.get("imatrix"), str(data.get("measure", "proxy")),
            tuple(GroupMeasurement.from_json(m) for m in data.get("measurements", ())),
            float(data.get("seconds", 0.0)), int(data.get("fixed_elements", 0)))


def with_proxy_gains(table: SensitivityTable) -> SensitivityTable:
    """``table`` as the proxy alone can judge it: gain 1 for every tensor the importance
    matrix weighed. A tensor it has no statistics for (the token embeddings, the output) gets
    the gain of all the others together: its error reaches every token's logits directly
    (the output, or a tied embedding), and on SmolLM2 the measured gain of the tied
    embeddings was 125 times a block tensor's. Without this the allocation would take bits
    from the largest tensor first, unseen."""
    weighted = sum(1 for t in table.tensors if t.weighted) or 1
    return replace(table, measure="proxy", measurements=(), tensors=tuple(
        replace(t, gain=1.0 if t.weighted else float(weighted), group="")
        for t in table.tensors))


def probe_for(tensor: TensorSensitivity) -> str:
    """The type a measurement moves a tensor to from the base: its cheapest candidate of at
    least 3.4 bits per weight (Q3_K or IQ3_S for rows that take K-quants, IQ4_NL or Q4_0 for
    the others), where quantization error is large enough to measure and the model still
    behaves like itself (much lower, errors stop adding up)."""
    usable = [t for t in tensor.errors if bits_per_weight(t) >= 3.4]
    pool = usable or list(tensor.errors)
    return min(pool, key=lambda t: (bits_per_weight(t), tensor.errors[t]))


def layer_groups(n_layers: int, parts: int) -> list[range]:
    """The layers split into ``parts`` contiguous groups of nearly equal size."""
    parts = max(1, min(parts, n_layers))
    edges = [round(i * n_layers / parts) for i in range(parts + 1)]
    return [range(edges[i], edges[i + 1]) for i in range(parts)]


def measurement_groups(table: SensitivityTable, parts: int) -> dict[str, list[str]]:
    """Tensors to measure together: each kind × ``parts`` depth groups of the blocks, and
    each tensor outside the blocks alone. Names like 'ffn_down 0–9'."""
    groups: dict[str, list[str]] = {}
    ranges = layer_groups(table.n_layers, parts)
    for t in table.tensors:
        if t.layer is None:
            groups.setdefault(t.kind, []).append(t.name)
            continue
        part = next(r for r in ranges if t.layer in r)
        groups.setdefault(f"{t.kind} {part.start}–{part.stop - 1}", []).append(t.name)
    return groups


def with_gains(table: SensitivityTable, measurements: Sequence[GroupMeasurement],
               measure: str) -> SensitivityTable:
    """``table`` with each tensor's gain set from its group's measurement: the measured KLD
    change divided by the group's summed relative error at the probe types, so that the
    proxy's predictions for the group add up to what was measured. A change at or below zero
    (the group does not matter measurably) gets a gain a hundred times below the smallest
    positive one, so that such tensors are the first to give bits away."""
    sums: dict[str, float] = {}
    by_name = table.by_name()
    for m in measurements:
        sums[m.group] = sum(by_name[n].relative(m.probes[n]) for n in m.tensors)
    gains = {m.group: m.delta / sums[m.group] for m in measurements
             if m.delta > 0 and sums[m.group] > 0}
    floor = min(gains.values(), default=1.0) / 100
    group_of = {n: m.group for m in measurements for n in m.tensors}
    tensors = tuple(replace(t, gain=gains.get(group_of.get(t.name, ""), floor),
                            group=group_of.get(t.name, "")) for t in table.tensors)
    return replace(table, tensors=tensors, measurements=tuple(measurements), measure=measure)


# -------------------------------------------------------------------------------- allocation

@dataclass(frozen=True)
class Option:
    """One way to store one tensor."""

    type_name: str
    bytes: int
    loss: float


@dataclass(frozen=True)
class Allocation:
    """The chosen type of each tensor, what it costs and what it is predicted to lose."""

    types: dict[str, str]
    bytes: int  # the quantized tensors' bytes, plus the fixed ones when from a table
    budget: int
    predicted_loss: float
    options: dict[str, tuple[Option, ...]] = field(default_factory=dict, repr=False)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -bits_per_weight(kv[0])))


def _hull(options: Sequence[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, loss), cheapest first: the only ones
    a steepest-first walk should stop at (the others cost more per unit of loss saved)."""
    best: dict[int, Option] = {}
    for o in options:
        if o.bytes not in best or o.loss < best[o.bytes].loss:
            best[o.bytes] = o
    frontier: list[Option] = []
    for o in sorted(best.values(), key=lambda o: o.bytes):
        if frontier and o.loss >= frontier[-1].loss:
            continue  # dominated: more bytes, no less loss
        while len(frontier) >= 2:
            a, b = frontier[-2], frontier[-1]
            # b lies on or above the line from a to o: it is not on the lower hull
            if (b.loss - a.loss) * (o.bytes - a.bytes) >= (o.loss - a.loss) * (b.bytes - a.bytes):
                frontier.pop()
            else:
                break
        frontier.append(o)
    return frontier


def allocate_options(options: Mapping[str, Sequence[Option]], budget: int) -> dict[str, Option]:
    """The option per item that minimises the summed loss with summed bytes ≤ ``budget``.

    Each item starts at its cheapest option; then the upgrade that saves the most loss per
    byte is taken, one at a time, along each item's convex hull, while it fits. When the
    steepest upgrade no longer fits, the remaining bytes are filled by the best single
    upgrades that do (any option, not only hull points). AutomixError when even the
    cheapest options exceed the budget."""
    hulls = {name: _hull(opts) for name, opts in options.items() if opts}
    missing = [name for name, opts in options.items() if not opts]
    if missing:
        raise AutomixError(f"{missing[0]} has no type to choose from.")
    chosen = {name: hull[0] for name, hull in hulls.items()}
    used = sum(o.bytes for o in chosen.values())
    if used > budget:
        raise AutomixError(f"The budget ({budget:,} bytes) is below the smallest mix "
                           f"({used:,} bytes): choose a larger size.")
    step = dict.fromkeys(hulls, 0)
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        hull, i = hulls[name], step[name]
        if i + 1 < len(hull):
            gain = hull[i].loss - hull[i + 1].loss
            cost = hull[i + 1].bytes - hull[i].bytes
            heapq.heappush(heap, (-gain / cost, name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        nxt = hulls[name][step[name] + 1]
        extra = nxt.bytes - chosen[name].bytes
        if used + extra > budget:
            continue  # this item stops here; smaller upgrades of others may still fit
        used += extra
        chosen[name] = nxt
        step[name] += 1
        push(name)
    return _fill(options, chosen, budget - used)


def _fill(options: Mapping[str, Sequence[Option]], chosen: dict[str, Option],
          room: int) -> dict[str, Option]:
    """Spend what the hull walk left: repeatedly the upgrade with the largest loss saved
    that fits in the room (there are few: each tensor stops at most once)."""
    while True:
        best: tuple[float, str, Option] | None = None
        for name, opts in options.items():
            current = chosen[name]
            for o in opts:
                extra = o.bytes - current.bytes
                saved = current.loss - o.loss
                if extra <= room and saved > 0 and (best is None or saved > best[0]):
                    best = (saved, name, o)
        if best is None:
            return chosen
        _, name, o = best
        room -= o.bytes - chosen[name].bytes
        chosen[name] = o


def options_for(tensor: TensorSensitivity, types: Iterable[str] | None = None) -> list[Option]:
    """The ways to store ``tensor``: each measured candidate type (restricted to ``types``
    when given) with its bytes and predicted loss."""
    allowed = set(types) if types is not None else None
    return [Option(t, tensor_bytes(tensor.shape, t), tensor.loss(t))
            for t in tensor.errors if allowed is None or t in allowed]


def allocate(table: SensitivityTable, budget_bytes: int,
             types: Iterable[str] | None = None) -> Allocation:
    """The auto mix of ``table`` in ``budget_bytes`` (all tensors, the unquantized ones
    included, as llama.cpp counts a file's tensor data)."""
    options = {t.name: options_for(t, types) for t in table.tensors}
    chosen = allocate_options(options, budget_bytes - table.fixed_bytes)
    return Allocation({n: o.type_name for n, o in chosen.items()},
                      sum(o.bytes for o in chosen.values()) + table.fixed_bytes, budget_bytes,
                      sum(o.loss for o in chosen.values()),
                      {n: tuple(opts) for n, opts in options.items()})


def predicted_loss(table: SensitivityTable, types: Mapping[str, str]) -> float | None:
    """The predicted loss of any assignment (a stock type's, from its dry run), or None when
    it uses a type the table did not measure for some tensor."""
    total = 0.0
    for t in table.tensors:
        chosen = types.get(t.name)
        if chosen is None or chosen not in t.errors:
            return None
        total += t.loss(chosen)
    return total


# -------------------------------------------------------------------------------- budgets

@dataclass(frozen=True)
class Budget:
    """How large the mix may be: the size of a stock type on this model, or bits per
    weight (over every tensor, as llama.cpp's 'BPW')."""

    stock: str | None = None
    bpw: float | None = None

    def __post_init__(self) -> None:
        if (self.stock is None) == (self.bpw is None):
            raise AutomixError("A budget is a stock type or a number of bits per weight.")

    @staticmethod
    def parse(text: str) -> Budget:
        """'Q4_K_M' (the size of that type) or '4.5' (bits per weight)."""
        from app.core import quant_types

        text = text.strip()
        try:
            bpw = float(text)
        except ValueError:
            if not quant_types.is_known(text):
                raise AutomixError(f"The budget is a type such as Q4_K_M or a number of "
                                   f"bits per weight, not {text!r}.") from None
            return Budget(stock=quant_types.by_name(text).name)
        if not 1.0 <= bpw <= 16.0:
            raise AutomixError(f"{bpw:g} bits per weight is outside 1–16.")
        return Budget(bpw=bpw)

    @property
    def label(self) -> str:
        """'the size of Q4_K_M' or '4.50 bits per weight'."""
        return f"the size of {self.stock}" if self.stock else f"{self.bpw:.2f} bits per weight"

    @property
    def tag(self) -> str:
        """For file names: 'Q4_K_M' or '4.50bpw'."""
        return self.stock or f"{self.bpw:.2f}bpw"

    def to_json(self) -> dict[str, Any]:
        return {"stock": self.stock} if self.stock else {"bpw": self.bpw}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Budget:
        return Budget(stock=data.get("stock"), bpw=data.get("bpw"))


def bpw_bytes(bpw: float, n_elements: int) -> int:
    """Bytes of ``n_elements`` values at ``bpw`` bits each."""
    return int(bpw * n_elements / 8)
