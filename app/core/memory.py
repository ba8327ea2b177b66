"""How much memory a model takes on each device, and the load plan that fits this machine.

The estimate mirrors what llama.cpp allocates, term by term:

- weights: the GGUF's tensor bytes. Block ``i`` goes to the GPU when ``i >= n_layer - n_gpu``;
  the output tensor too when ``n_gpu > n_layer``; the token embeddings always stay on the CPU.
  On the CPU, llama.cpp repacks some quant types into an interleaved copy (x86 with AVX2:
  Q4_0, Q4_K, IQ4_NL, MXFP4; AVX-512 adds Q2_K; Arm: more). The mapped file pages stay
  resident too, so repacked matrices count twice in the process's memory.
- KV cache: per layer ``n_ctx x n_head_kv x (head_dim_k + head_dim_v) x bytes(type)``, the
  context padded to 256 cells; sliding-window layers keep only their window (+ one batch).
- compute: on the CPU, what a full-context prompt batch touches: the batch's activations and
  its attention (``_attention``: with flash attention, the engine's default, an F16 mask and
  scratch; without it, the F32 scores and their F16 copy, 6 bytes x heads x ubatch x ctx, and
  an F32 mask). On a GPU, llama.cpp's reservation, which is allocated whole: the larger of the
  batch's logits and its attention scores (or flash attention's mask), plus the activations.
- overhead: llama.cpp's vocabulary tables (about 256 bytes a token) and a fixed 1.5 MiB.

Several offload devices (local GPUs and other machines' devices lent through llama.cpp's RPC
servers) share the offloaded layers the way llama.cpp splits them by default: in proportion
to each device's free memory, remote devices first (``split_layers``); each device holds its
layers' weights and KV cache and a compute reservation of its own.

Calibrated and checked against measured RSS by ``bench/memory.py`` (CPU, flash attention on,
as the engine loads by default; the scores term without it was calibrated the same way).
GPU figures follow the same rules but are not measured on the project's machines.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.core.gguf_info import ModelInfo, TensorInfo
from app.core.hardware import GIB, HardwareProfile, RemoteDevice
from app.core.units import format_bytes

MIB = 1024**2
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
            "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32}
KV_PAD = 256
FIXED_OVERHEAD = 3 * MIB // 2
VOCAB_BYTES_PER_TOKEN = 256
RAM_RESERVE = 3 * GIB // 2  # left for the OS and the app itself
GPU_MARGIN = 0.05  # of the GPU's free memory, for drivers and fragmentation
GPU_RESERVE = 256 * MIB

_REPACK_X86_AVX2 = {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"}
_REPACK_ARM_DOTPROD = {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4"}


@dataclass(frozen=True)
class DeviceUse:
    """Bytes one device holds for a loaded model."""

    device: str
    weights: int = 0
    repacked: int = 0
    kv_cache: int = 0
    compute: int = 0
    output: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        """All of the above."""
        return (self.weights + self.repacked + self.kv_cache + self.compute + self.output
                + self.overhead)


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of one model at one context and GPU-layer count."""

    n_ctx: int
    n_gpu_layers: int  # effective: 0 .. n_layers + 1 (the last one is the output layer)
    n_layers: int
    cpu: DeviceUse
    gpu: DeviceUse | None  # every offload device together (the one GPU, usually)
    # With several offload devices (GPUs, other machines): each one's share, in llama.cpp's
    # device order; empty with one device or none.
    devices: tuple[DeviceUse, ...] = ()

    @property
    def total(self) -> int:
        """Bytes on all devices together."""
        return self.cpu.total + (self.gpu.total if self.gpu else 0)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with totals."""
        data = asdict(self)
        data["cpu"]["total"] = self.cpu.total
        if self.gpu is not None:
            data["gpu"]["total"] = self.gpu.total
        for entry, use in zip(data["devices"], self.devices, strict=True):
            entry["total"] = use.total
        data["total"] = self.total
        return data


@dataclass(frozen=True)
class OffloadDevice:
    """A device that can take offloaded layers: a local GPU or another machine's device."""

    name: str  # as said to the user: "NVIDIA RTX 4090", "RPC0 at 192.168.1.5:50052"
    free: int  # bytes free as llama.cpp reports them: they decide its share of the layers
    usable: int  # what the plan lets it take (free less the margins)
    endpoint: str | None = None  # the RPC server lending it; None for a local device


def usable_memory(free: int) -> int:
    """What a load may take of a device with ``free`` bytes: GPU_MARGIN and GPU_RESERVE kept."""
    return max(0, int(free * (1 - GPU_MARGIN)) - GPU_RESERVE)


def remote_device(device: RemoteDevice) -> OffloadDevice:
    """Another machine's device as an offload device, with the margins of a local GPU."""
    return OffloadDevice(f"{device.name} at {device.endpoint}", device.memory_free,
                         usable_memory(device.memory_free), device.endpoint)


def split_layers(n_layer: int, n_gpu: int, frees: Sequence[int]) -> list[list[int]]:
    """Which layers each offload device holds: llama.cpp's default split (``load_tensors``).

    Layers ``n_layer + 1 - n_gpu`` … ``n_layer`` are offloaded (``n_layer`` is the output
    layer); layer ``i`` goes to the first device whose cumulative share of the free memory
    exceeds ``(i - first) / n_gpu``. The rest, and the input layer, stay on the CPU.
    """
    placed: list[list[int]] = [[] for _ in frees]
    n_gpu = min(max(n_gpu, 0), n_layer + 1)
    if not frees or n_gpu == 0:
        return placed
    total = float(sum(frees)) or float(len(frees))
    bounds, running = [], 0.0
    for free in frees:
        running += (free if sum(frees) else 1) / total
        bounds.append(running)
    first = n_layer + 1 - n_gpu
    for layer in range(first, n_layer + 1):
        position = (layer - first) / n_gpu
        index = bisect.bisect_right(bounds, position)
        placed[min(index, len(frees) - 1)].append(layer)
    return placed


def repack_types(cpu_features: tuple[str, ...]) -> set[str]:
    """Quant types llama.cpp's CPU backend repacks on a CPU with these features."""
    features = set(cpu_features)
    types: set[str] = set()
    if "AVX2" in features:
        types |= _REPACK_X86_AVX2
    if "AVX512F" in features:
        types.add("Q2_K")
    if "NEON" in features and "DOTPROD" in features:
        types |= _REPACK_ARM_DOTPROD
        if "I8MM" in features:
            types.add("Q8_0")
    return types


def _is_repacked(t: TensorInfo, types: set[str]) -> bool:
    return (t.type_name in types and len(t.shape) == 2 and t.shape[1] % 8 == 0
            and t.name != "token_embd.weight")


def _swa_layers(info: ModelInfo) -> set[int]:
    if not info.sliding_window or not info.sliding_window_pattern:
        return set()
    period = info.sliding_window_pattern
    return {i for i in range(info.n_layers) if (i + 1) % period != 0}


def kv_cache_bytes(info: ModelInfo, n_ctx: int, layers: range, kv_type: str = "f16",
                   n_ubatch: int = 512, n_seq: int = 1) -> int:
    """KV cache of ``layers`` at context ``n_ctx``, for each of ``n_seq`` parallel sequences
    (each has its own cache of ``n_ctx`` cells: ``LoadSettings.n_parallel``)."""
    cells = math.ceil(n_ctx / KV_PAD) * KV_PAD
    swa = _swa_layers(info)
    swa_cells = (min(cells, math.ceil((info.sliding_window or 0) + n_ubatch) // KV_PAD * KV_PAD
                     + KV_PAD) if swa else cells)
    per_cell = info.n_head_kv * (info.head_dim_k + info.head_dim_v) * KV_BYTES[kv_type]
    return n_seq * int(sum((swa_cells if i in swa else cells) * per_cell for i in layers))


def _activations(info: ModelInfo, n_ubatch: int) -> int:
    return n_ubatch * (3 * (info.n_ff or 4 * info.n_embd) + 6 * info.n_embd) * 4


def _attention(info: ModelInfo, ubatch: int, cells: int, flash_attn: bool) -> int:
    """What a full-context batch's attention touches on the CPU. Without flash attention: the
    F32 scores and their F16 copy for the V product (6 bytes per head), and the F32 mask. With
    it no scores exist, only its F16 mask and scratch (~2.5 bytes per batch row and cell) and
    F32 copies of the batch's queries and outputs (8 bytes per row and embedding value):
    fitted to measured RSS by bench/memory.py (SmolLM2 within ~3%, the tiny model ~2 MiB)."""
    if flash_attn:
        return 5 * ubatch * cells // 2 + 8 * ubatch * info.n_embd
    return (6 * info.n_head + 4) * ubatch * cells


SCORES_ALLOWANCE = 512 * 1024**2  # RAM that flash attention 'auto' spends on speed, at least


EMBEDDINGS_MAX_CTX = 8192  # the embeddings context's longest text (app.engine.embedding)
# architectures whose embedding models are encoders only: no KV cache, no output head
ENCODER_ONLY = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                          "jina-bert-v3", "modern-bert", "neo-bert", "t5encoder"})


def embeddings_context(n_ctx: int, n_ctx_train: int) -> int:
    """The embeddings context's length for a model loaded at ``n_ctx``: a whole text is one
    batch, so it is capped by the model's trained context and ``EMBEDDINGS_MAX_CTX``."""
    return min(n_ctx, n_ctx_train or EMBEDDINGS_MAX_CTX, EMBEDDINGS_MAX_CTX)


def embeddings_bytes(info: ModelInfo, n_ctx: int) -> int:
    """What serving embeddings adds: the second context ``app.engine.embedding`` makes on the
    first request, at its largest (a text as long as that context). 0 for a model that
    declares no pooling (a chat model: embeddings are refused). llama.cpp makes every token
    an output when embeddings are on, so a decoder's output head runs for all of them: its
    logits (vocabulary x tokens x 4 bytes) are kept in the output buffer *and* computed in
    the graph, where they share memory with the activations (the larger counts). Attention
    as flash attention (llama.cpp's 'auto' on the CPU; the context sets nothing). Measured
    (the engine child's resident growth): SmolLM2 with mean pooling declared, whole-context
    texts at 512 / 2,048 / 4,096 tokens: 209 / 836 / 1,678 MiB against 207 / 837 / 1,693
    estimated; tests/server/test_api.py checks 1,024 within 10%. Encoder-only models (BERT
    family) have no cache and no head; not measured here (none at hand)."""
    if not info.pooling_type:
        return 0
    n = embeddings_context(n_ctx, info.n_ctx_train)
    cells = math.ceil(n / KV_PAD) * KV_PAD
    encoder = info.architecture in ENCODER_ONLY
    kv = 0 if encoder else kv_cache_bytes(info, n, range(info.n_layers), n_ubatch=n)
    logits = 0 if encoder else info.n_vocab * n * 4
    outputs = logits + info.n_embd * n * 4
    return kv + _attention(info, n, cells, True) + outputs + max(_activations(info, n), logits)


def flash_attention(setting: bool | None, n_gpu_layers: int, kv_type: str = "f16", *,
                    scores_bytes: int = 0, weights_bytes: int = 0) -> bool:
    """Whether a load uses flash attention; ``setting`` None is the 'auto' setting.

    Auto: on when layers leave the CPU (a GPU, another machine's device: llama.cpp's 'auto',
    on where the device supports it) or the V cache is quantized (llama.cpp quantizes it only
    with flash attention). On the CPU alone it is off unless the attention scores it would
    need instead (``scores_bytes``, see ``_attention``) take more than a quarter of the
    weights (``weights_bytes``) or 512 MiB, whichever is more: llama.cpp's CPU flash attention
    loses at depth (llama-bench, SmolLM2 Q4_K_M, 2 threads, 2,436 tokens of context: generation
    25.6 tok/s with it, 55.3 without; 21 new tokens 36 against 229 tok/s; it wins 10% only near
    an empty context), and a chat's later turns are at depth; a long context on a large model
    keeps it, since the scores would then cost gigabytes.
    """
    if setting is not None:
        return setting
    if n_gpu_layers != 0 or kv_type not in ("f16", "f32"):
        return True
    return scores_bytes > max(weights_bytes // 4, SCORES_ALLOWANCE)


def scores_bytes(n_head: int, n_ctx: int, n_ubatch: int = 512) -> int:
    """The attention scores a CPU load without flash attention keeps (``_attention``)."""
    cells = math.ceil(n_ctx / KV_PAD) * KV_PAD
    return (6 * n_head + 4) * min(n_ubatch, n_ctx) * cells


def flash_setting(value: object) -> bool | None:
    """The load setting ('auto', 'on', 'off'; older settings held a bool) as ``flash_attention``
    takes it."""
    if isinstance(value, bool):
        return value
    return {"on": True, "off": False}.get(str(value))


def estimate(info: ModelInfo, n_ctx: int, n_gpu_layers: int = 0, *, n_ubatch: int = 512,
             kv_type: str = "f16", cpu_features: tuple[str, ...] = (),
             gpu_name: str = "GPU", flash_attn: bool | None = None,
             devices: Sequence[OffloadDevice] = (), n_seq: int = 1,
             embeddings: bool = False) -> MemoryEstimate:
    """Bytes on the CPU (and GPU) for ``info`` loaded at ``n_ctx`` with ``n_gpu_layers``
    (-1: all, the output layer included). ``flash_attn``: None as the engine's 'auto'
    (``flash_attention``). ``devices``: more than one offload device splits the offloaded
    layers between them (``split_layers``). ``n_seq``: parallel sequences, each with its own
    KV cache of ``n_ctx`` (the compute buffers do not grow: a batch is as large either way;
    tests/server/test_parallel.py measures four sequences against one). ``embeddings``: the
    model is served, so an embeddings request may add its context (``embeddings_bytes``;
    counted on the CPU)."""
    flash_attn = flash_attention(flash_attn, n_gpu_layers, kv_type,
                                 scores_bytes=scores_bytes(info.n_head, n_ctx, n_ubatch),
                                 weights_bytes=sum(t.n_bytes for t in info.tensors))
    if len(devices) > 1:
        split = _estimate_split(info, n_ctx, n_gpu_layers, n_ubatch=n_ubatch, kv_type=kv_type,
                                cpu_features=cpu_features, flash_attn=flash_attn,
                                devices=devices, n_seq=n_seq)
        return _with_embeddings(split, info, n_ctx) if embeddings else split
    if devices:
        gpu_name = devices[0].name
    n_layer = info.n_layers
    n_gpu = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    first_gpu_layer = max(n_layer - n_gpu, 0)
    output_on_gpu = n_gpu > n_layer
    ubatch = min(n_ubatch, n_ctx)
    cells = math.ceil(n_ctx / KV_PAD) * KV_PAD
    types = repack_types(cpu_features)

    cpu_weights = gpu_weights = repacked = 0
    for t in info.tensors:
        layer = t.layer
        on_gpu = (layer >= first_gpu_layer and n_gpu > 0) if layer is not None else (
            output_on_gpu and t.name != "token_embd.weight")
        if on_gpu:
            gpu_weights += t.n_bytes
        else:
            cpu_weights += t.n_bytes
            if _is_repacked(t, types):
                repacked += t.n_bytes

    attention = _attention(info, ubatch, cells, flash_attn)
    overhead = FIXED_OVERHEAD + VOCAB_BYTES_PER_TOKEN * info.n_vocab
    cpu = DeviceUse(
        device="CPU",
        weights=cpu_weights,
        repacked=repacked,
        kv_cache=kv_cache_bytes(info, n_ctx, range(0, first_gpu_layer), kv_type, ubatch, n_seq),
        compute=(attention + _activations(info, ubatch)) if first_gpu_layer > 0 or not n_gpu
        else _activations(info, ubatch),
        output=info.n_vocab * 4,
        overhead=overhead,
    )
    gpu = None
    if n_gpu > 0:
        scores = 5 * ubatch * cells // 2 if flash_attn else (info.n_head + 1) * ubatch * cells * 4
        reserved = max(info.n_vocab * ubatch * 4, scores)
        gpu = DeviceUse(
            device=gpu_name,
            weights=gpu_weights,
            kv_cache=kv_cache_bytes(info, n_ctx, range(first_gpu_layer, n_layer), kv_type,
                                    ubatch, n_seq),
            compute=reserved + _activations(info, ubatch),
        )
    est = MemoryEstimate(n_ctx=n_ctx, n_gpu_layers=n_gpu, n_layers=n_layer, cpu=cpu, gpu=gpu)
    return _with_embeddings(est, info, n_ctx) if embeddings else est


def _with_embeddings(est: MemoryEstimate, info: ModelInfo, n_ctx: int) -> MemoryEstimate:
    extra = embeddings_bytes(info, n_ctx)
    if not extra:
        return est
    return dataclasses.replace(est, cpu=dataclasses.replace(est.cpu,
                                                            compute=est.cpu.compute + extra))


def _estimate_split(info: ModelInfo, n_ctx: int, n_gpu_layers: int, *, n_ubatch: int,
                    kv_type: str, cpu_features: tuple[str, ...], flash_attn: bool,
                    devices: Sequence[OffloadDevice], n_seq: int = 1) -> MemoryEstimate:
    """``estimate`` with the offloaded layers split between several devices."""
    n_layer = info.n_layers
    n_gpu = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    cpu_only = estimate(info, n_ctx, 0, n_ubatch=n_ubatch, kv_type=kv_type,
                        cpu_features=cpu_features, flash_attn=flash_attn, n_seq=n_seq)
    if n_gpu == 0:
        return cpu_only
    ubatch = min(n_ubatch, n_ctx)
    cells = math.ceil(n_ctx / KV_PAD) * KV_PAD
    first = n_layer + 1 - n_gpu
    owner: dict[int, int] = {}
    for index, layers in enumerate(split_layers(n_layer, n_gpu, [d.free for d in devices])):
        owner.update(dict.fromkeys(layers, index))
    weights = [0] * len(devices)
    cpu_weights = repacked = 0
    types = repack_types(cpu_features)
    for t in info.tensors:
        layer = n_layer if t.layer is None and t.name != "token_embd.weight" else t.layer
        if layer is not None and layer in owner:
            weights[owner[layer]] += t.n_bytes
        else:
            cpu_weights += t.n_bytes
            repacked += t.n_bytes if _is_repacked(t, types) else 0
    scores = 5 * ubatch * cells // 2 if flash_attn else (info.n_head + 1) * ubatch * cells * 4
    uses = []
    for index, device in enumerate(devices):
        layers = [i for i, o in owner.items() if o == index]
        if not layers:
            uses.append(DeviceUse(device=device.name))
            continue
        reserved = max(info.n_vocab * ubatch * 4, scores) if n_layer in layers else scores
        uses.append(DeviceUse(
            device=device.name, weights=weights[index],
            kv_cache=kv_cache_bytes(info, n_ctx, range(min(layers), min(max(layers) + 1,
                                                                        n_layer)),
                                    kv_type, ubatch, n_seq),
            compute=reserved + _activations(info, ubatch)))
    cpu = DeviceUse(
        device="CPU", weights=cpu_weights, repacked=repacked,
        kv_cache=kv_cache_bytes(info, n_ctx, range(0, first), kv_type, ubatch, n_seq),
        compute=cpu_only.cpu.compute if first > 0 else _activations(info, ubatch),
        output=cpu_only.cpu.output, overhead=cpu_only.cpu.overhead)
    together = DeviceUse(device=f"{len(devices)} devices",
                         weights=sum(u.weights for u in uses),
                         kv_cache=sum(u.kv_cache for u in uses),
                         compute=sum(u.compute for u in uses))
    return MemoryEstimate(n_ctx=n_ctx, n_gpu_layers=n_gpu, n_layers=n_layer, cpu=cpu,
                          gpu=together, devices=tuple(uses))


# ---------------------------------------------------------------------------------------------
# The plan: GPU layers and context for this machine


@dataclass(frozen=True)
class FitPlan:
    """How to load a model here, whether it fits, and why, in words."""

    fit: str  # "gpu", "ram", "partial" or "too_large"
    n_gpu_layers: int
    n_ctx: int
    max_ctx: int
    estimate: MemoryEstimate
    explanation: tuple[str, ...]
    # The RPC servers whose devices take layers: the load must name the same ones
    # (LoadSettings.rpc_servers), since llama.cpp splits the layers over the devices it is given.
    rpc_servers: tuple[str, ...] = ()

    @property
    def badge(self) -> str:
        """Short label for lists."""
        return {"gpu": "Fits on GPU", "ram": "Fits in RAM", "partial": "Partial offload",
                "too_large": "Too large"}[self.fit]

    def sentence(self) -> str:
        """The answer in one line: 'needs 6.1 GiB at 8K context: fits on your GPU'."""
        need = f"needs {format_bytes(self.estimate.total)} at {context_label(self.n_ctx)} context"
        gpu_layers = min(self.n_gpu_layers, self.estimate.n_layers + 1)
        if self.rpc_servers and self.fit in ("gpu", "partial"):
            machines = len(self.rpc_servers)
            where = (f"{gpu_layers} of {self.estimate.n_layers + 1} layers go to "
                     f"{machines} other machine{'s' if machines > 1 else ''}"
                     + (", the rest run on this CPU" if self.fit == "partial" else ""))
            longest = (f"; up to {context_label(self.max_ctx)} context fits"
                       if self.max_ctx and self.max_ctx != self.n_ctx else "")
            return f"{need}: {where}{longest}"
        where = {
            "gpu": "fits on your GPU",
            "ram": "fits in your RAM",
            "partial": f"{gpu_layers} of {self.estimate.n_layers + 1} layers fit on your GPU, "
                       "the rest run on the CPU",
            "too_large": "too large for this machine",
        }[self.fit]
        longest = (f"; up to {context_label(self.max_ctx)} context fits"
                   if self.max_ctx and self.max_ctx != self.n_ctx else "")
        return f"{need}: {where}{longest}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"fit": self.fit, "badge": self.badge, "n_gpu_layers": self.n_gpu_layers,
                "n_ctx": self.n_ctx, "max_ctx": self.max_ctx,
                "estimate": self.estimate.to_json(), "explanation": list(self.explanation),
                "rpc_servers": list(self.rpc_servers), "sentence": self.sentence()}


def context_label(n_ctx: int) -> str:
    """A context length as people say it: 8192 → '8K', 131072 → '128K', 1000 → '1,000'."""
    return f"{n_ctx // 1024}K" if n_ctx >= 1024 and n_ctx % 1024 == 0 else f"{n_ctx:,}"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def budgets(profile: HardwareProfile) -> tuple[int, int, str]:
    """Bytes a model may take here: (RAM, memory of the GPU with the most free, its name).
    RAM keeps back RAM_RESERVE for the system; the GPU a margin and GPU_RESERVE."""
    ram = max(0, profile.ram_available - RAM_RESERVE)
    gpus = sorted(profile.gpus, key=lambda d: d.memory_free or 0, reverse=True)
    if not gpus:
        return ram, 0, ""
    best = gpus[0]
    free = best.memory_free or 0
    return ram, max(0, int(free * (1 - GPU_MARGIN)) - GPU_RESERVE), best.description or best.name


def _fits(est: MemoryEstimate, ram: int, vram: int) -> bool:
    return est.cpu.total <= ram and (est.gpu is None or est.gpu.total <= vram)


def offload_devices(profile: HardwareProfile) -> tuple[OffloadDevice, ...]:
    """The devices a load across other machines uses, in llama.cpp's order: the RPC servers'
    devices first, then this machine's GPUs (integrated ones only without a discrete GPU)."""
    remote = [remote_device(d) for d in profile.remote_devices]
    gpus = [g for g in profile.gpus if g.kind == "gpu"] or [
        g for g in profile.gpus if g.kind == "igpu"]
    local = [OffloadDevice(g.description or g.name, g.memory_free or 0,
                           usable_memory(g.memory_free or 0)) for g in gpus]
    return tuple(remote + local)


def placement(est: MemoryEstimate, devices: Sequence[OffloadDevice]) -> tuple[str, ...]:
    """Where each layer goes, in words: one line per device that holds some."""
    n_layer = est.n_layers
    held = split_layers(n_layer, est.n_gpu_layers, [d.free for d in devices])
    first = n_layer + 1 - est.n_gpu_layers

    def span(layers: list[int]) -> str:
        blocks = [i for i in layers if i < n_layer]
        text = (f"layer {blocks[0]}" if len(blocks) == 1 else
                f"layers {blocks[0]}–{blocks[-1]}" if blocks else "")
        if n_layer in layers:
            text += (" and " if text else "") + "the output layer"
        return text

    lines = []
    if first > 0:
        lines.append(f"This CPU: {span(list(range(0, first)))} "
                     f"({_gib(est.cpu.total)} of RAM).")
    uses = est.devices or ((est.gpu,) if est.gpu is not None else ())
    for device, layers, use in zip(devices, held, uses, strict=False):
        if layers:
            lines.append(f"{device.name}: {span(layers)} ({_gib(use.total)} of "
                         f"{_gib(device.usable)} usable).")
    return tuple(lines)


def _plan_split(info: ModelInfo, profile: HardwareProfile, ctx: int, n_gpu_layers: int | None,
                kv_type: str, flash_attn: bool | None, n_seq: int = 1,
                embeddings: bool = False) -> FitPlan:
    """``plan`` when other machines lend devices: layers split over them and local GPUs."""
    features = profile.repacking_features
    # llama.cpp gives every device it is handed a share by free memory, and the first
    # offloaded layer to the first device whatever its size: a server without room for one
    # block is left out of the load (and said so) rather than making nothing fit.
    block = max((estimate(info, ctx, 1, kv_type=kv_type, cpu_features=features,
                          flash_attn=flash_attn, n_seq=n_seq).gpu or DeviceUse("")).total, 1)
    left_out = [d for d in offload_devices(profile) if d.endpoint and d.usable < block]
    devices = tuple(d for d in offload_devices(profile) if d not in left_out)
    ram = max(0, profile.ram_available - RAM_RESERVE)

    def est(layers: int, c: int) -> MemoryEstimate:
        return estimate(info, c, layers, kv_type=kv_type, cpu_features=features,
                        flash_attn=flash_attn, devices=devices, n_seq=n_seq,
                        embeddings=embeddings)

    def fits(e: MemoryEstimate) -> bool:
        uses = e.devices or ((e.gpu,) if e.gpu is not None else ())
        return e.cpu.total <= ram and all(
            u.total <= d.usable for u, d in zip(uses, devices, strict=False))

    def devices_fit(e: MemoryEstimate) -> bool:
        uses = e.devices or ((e.gpu,) if e.gpu is not None else ())
        return all(u.total <= d.usable for u, d in zip(uses, devices, strict=False))

    if n_gpu_layers is None:  # each device's share only grows with the layer count
        layers = _most_layers(info, lambda n: devices_fit(est(n, ctx)))
    else:
        layers = info.n_layers + 1 if n_gpu_layers < 0 else n_gpu_layers
    chosen = est(layers, ctx)
    max_ctx = _longest_context(info, ctx, lambda c: fits(est(layers, c)))
    endpoints = tuple(dict.fromkeys(d.endpoint for d in devices if d.endpoint))
    on = f"{len(endpoints)} other machine{'s' if len(endpoints) > 1 else ''}"
    if not fits(chosen):
        fit = "too_large"
        lines = [f"Needs {_gib(chosen.cpu.total)} of RAM and "
                 f"{_gib(chosen.gpu.total if chosen.gpu else 0)} on the devices of this "
                 f"machine and {on} at context {ctx:,}: more than they have free. Pick a "
                 "smaller quantization or a shorter context, or add a machine."]
    elif layers > info.n_layers:
        fit = "gpu"
        lines = [f"All {info.n_layers} layers go to " + (
            devices[0].name if len(devices) == 1 else
            f"{len(devices)} devices on {on}"
            + (" and this machine" if any(d.endpoint is None for d in devices) else "")
            + ", split by their free memory as llama.cpp splits them") + "."]
    elif layers > 0:
        fit = "partial"
        lines = [f"{layers} of {info.n_layers + 1} layers go to " + (
            devices[0].name if len(devices) == 1 else
            f"{len(devices)} devices on {on}, split by their free memory")
            + "; the rest run on this CPU."]
    else:
        fit = "ram"
        lines = ["No layer fits on the other machines' devices: the model runs on this CPU."]
    lines += placement(chosen, devices)
    lines += [f"{d.name} is left out: {_gib(d.usable)} usable of {_gib(d.free)} free, less "
              f"than one layer ({_gib(block)})." for d in left_out]
    lines.append("Every generated token crosses the network to each machine holding layers: "
                 "expect lower speed than on one machine with the same devices.")
    if max_ctx:
        lines.append(f"Longest context that fits with this plan: {max_ctx:,} tokens.")
    return FitPlan(fit, layers, ctx, max_ctx, chosen, tuple(lines),
                   endpoints if layers > 0 else ())


def _most_layers(info: ModelInfo, fits: Callable[[int], bool]) -> int:
    """The most layers (0 … all and the output layer) for which ``fits`` holds, by bisection:
    what offloaded layers take only grows with their count."""
    layers, lo, hi = 0, 1, info.n_layers + 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            layers, lo = mid, mid + 1
        else:
            hi = mid - 1
    return layers


def _longest_context(info: ModelInfo, ctx: int, fits: Callable[[int], bool]) -> int:
    """The longest context among the powers of two from 512 and the trained length (or
    ``ctx`` when longer) for which ``fits`` holds; 0 when none does."""
    upper = max(info.n_ctx_train or ctx, ctx)
    candidates = sorted({2**k for k in range(9, 21) if 2**k <= upper} | {upper})
    return max((c for c in candidates if fits(c)), default=0)


def plan(info: ModelInfo, profile: HardwareProfile, n_ctx: int | None = None,
         n_gpu_layers: int | None = None, kv_type: str = "f16",
         flash_attn: bool | None = None, n_seq: int = 1, embeddings: bool = False) -> FitPlan:
    """Choose GPU layers (all that fit, unless given) and check the context; explain. With
    other machines' devices in the profile (``profile.remote``), layers are split over them
    and this machine's GPUs. Serving: ``n_seq`` replies at once, each with ``n_ctx``, and
    ``embeddings`` (``estimate``)."""
    if profile.remote_devices:
        return _plan_split(info, profile, n_ctx or min(info.n_ctx_train or 4096, 4096),
                           n_gpu_layers, kv_type, flash_attn, n_seq, embeddings)
    ram, vram, gpu_name = budgets(profile)
    ctx = n_ctx or min(info.n_ctx_train or 4096, 4096)
    features = profile.repacking_features

    def est(layers: int, c: int) -> MemoryEstimate:
        return estimate(info, c, layers, kv_type=kv_type, cpu_features=features,
                        gpu_name=gpu_name or "GPU", flash_attn=flash_attn, n_seq=n_seq,
                        embeddings=embeddings)

    if n_gpu_layers is None:
        # The most layers whose GPU share fits: that share only grows with the layer count, so
        # a bisection finds it (an 80-layer model is planned for every catalog quant at once).
        def gpu_fits(n: int) -> bool:
            gpu = est(n, ctx).gpu
            return gpu is not None and gpu.total <= vram

        layers = _most_layers(info, gpu_fits) if vram > 0 else 0
    else:
        layers = info.n_layers + 1 if n_gpu_layers < 0 else n_gpu_layers
    chosen = est(layers, ctx)

    max_ctx = _longest_context(info, ctx, lambda c: _fits(est(layers, c), ram, vram))
    lines = []
    if not _fits(chosen, ram, vram):
        fit = "too_large"
        lines.append(f"Needs {_gib(chosen.cpu.total)} of RAM"
                     + (f" and {_gib(chosen.gpu.total)} on the GPU" if chosen.gpu else "")
                     + f" at context {ctx:,}, but only {_gib(ram)} of RAM"
                     + (f" and {_gib(vram)} of GPU memory are free" if vram else " is free")
                     + ". Pick a smaller quantization or a shorter context.")
    elif chosen.gpu is not None and layers > info.n_layers:
        fit = "gpu"
        lines.append(f"All {info.n_layers} layers fit on {gpu_name}: "
                     f"{_gib(chosen.gpu.total)} of {_gib(vram)} usable.")
    elif chosen.gpu is not None and layers > 0:
        fit = "partial"
        lines.append(f"{layers} of {info.n_layers + 1} layers fit on {gpu_name} "
                     f"({_gib(chosen.gpu.total)}); the rest run on the CPU "
                     f"({_gib(chosen.cpu.total)} of RAM). Expect lower speed than fully on GPU.")
    else:
        fit = "ram"
        lines.append(f"Runs on the CPU in {_gib(chosen.cpu.total)} of RAM "
                     f"({_gib(ram)} available for models).")
    kv = chosen.cpu.kv_cache + (chosen.gpu.kv_cache if chosen.gpu else 0)
    lines.append(f"Context {ctx:,}: the KV cache takes {_gib(kv)}; "
                 f"weights {_gib(chosen.cpu.weights + (chosen.gpu.weights if chosen.gpu else 0))}.")
    if max_ctx:
        lines.append(f"Longest context that fits with this plan: {max_ctx:,} tokens"
                     + (" (the model's trained maximum)."
                        if max_ctx >= max(info.n_ctx_train or ctx, ctx) else "."))
    if chosen.cpu.repacked:
        lines.append(f"{_gib(chosen.cpu.repacked)} of weights are repacked for faster CPU "
                     "kernels and kept twice in memory.")
    return FitPlan(fit, layers, ctx, max_ctx, chosen, tuple(lines))


# ---------------------------------------------------------------------------------------------
# Two models at once (A/B chat)


@dataclass(frozen=True)
class PairPlan:
    """Whether two models can be loaded side by side here, each with its own plan."""

    together: bool
    first: FitPlan
    second: FitPlan
    threads_each: int | None  # when together on the CPU: the cores split between them
    explanation: str


def plan_pair(first: ModelInfo, second: ModelInfo, profile: HardwareProfile,
              n_ctx: int) -> PairPlan:
    """Load both at once when their memory together fits the budgets, else one after the other.

    Each model gets the plan it would get alone (GPU layers included); together means the sums
    fit in RAM and on the GPU. Both generating at once on the CPU would fight over the cores, so
    each then gets half of them: its speed is that of half the machine, which the caller says.
    """
    ram, vram, _ = budgets(profile)
    a, b = plan(first, profile, n_ctx), plan(second, profile, n_ctx)
    if a.rpc_servers or b.rpc_servers:
        return PairPlan(False, a, b, None,
                        "They are loaded one after the other: an RPC server serves one client "
                        "at a time, so two models cannot share the other machines at once.")
    cpu = a.estimate.cpu.total + b.estimate.cpu.total
    gpu = sum(p.estimate.gpu.total for p in (a, b) if p.estimate.gpu is not None)
    fits = "too_large" not in (a.fit, b.fit) and cpu <= ram and gpu <= vram
    if not fits:
        return PairPlan(False, a, b, None,
                        f"Both together need {_gib(cpu)} of RAM"
                        + (f" and {_gib(gpu)} on the GPU" if gpu else "")
                        + f" ({_gib(ram)} of RAM free for models): they are loaded one after "
                        "the other, each with the whole machine.")
    on_cpu = a.fit in ("ram", "partial") or b.fit in ("ram", "partial")
    cores = profile.cpu.physical_cores or profile.cpu.logical_cores or 2
    threads = max(1, cores // 2) if on_cpu else None
    text = (f"Both loaded together: {_gib(cpu)} of RAM" + (f", {_gib(gpu)} on the GPU" if gpu
                                                            else "")
            + f" of {_gib(ram)} free for models.")
    if threads is not None:
        text += (f" They answer at the same time on {threads} CPU thread(s) each, so each "
                 "speed is that of half the machine.")
    return PairPlan(True, a, b, threads, text)
