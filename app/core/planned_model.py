"""Describe a model file before it exists: a quantization's tensors from llama.cpp's dry run.

The quantizer's dry run says which ggml type every tensor would get (the type's own mix of
Q6_K/Q4_K layers and the fallbacks for rows whose width is not a multiple of the block), so the
planned file's tensor sizes, and with them the memory estimate and the weight repacking, are the
real ones rather than a bits-per-weight guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import gguf

from app.core import quant_types
from app.core.gguf_info import ModelInfo, TensorTypeTotal


def tensor_bytes(shape: tuple[int, ...], type_name: str) -> int:
    """Bytes of a tensor of ``shape`` (ggml order) stored as ggml type ``type_name``."""
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    return math.prod(shape) // block * type_size


def with_tensor_types(info: ModelInfo, tensor_types: Iterable[tuple[str, str]], quant: str,
                      path: Path | None = None) -> ModelInfo:
    """``info`` as it would be with each named tensor stored in the given type; tensors not
    named keep theirs. The file size changes by the tensor bytes (the header stays)."""
    new_types = dict(tensor_types)
    tensors = tuple(
        replace(t, type_name=new_types[t.name], n_bytes=tensor_bytes(t.shape, new_types[t.name]))
        if t.name in new_types else t for t in info.tensors)
    totals: dict[str, list[int]] = {}
    for t in tensors:
        entry = totals.setdefault(t.type_name, [0, 0, 0])
        entry[0] += 1
        entry[1] += t.n_bytes
        entry[2] += math.prod(t.shape)
    tensor_total = sum(t.n_bytes for t in tensors)
    qt = quant_types.by_name(quant)
    return replace(
        info, path=path or info.path.with_name(f"{info.path.stem}-{qt.name}.gguf"),
        file_size=info.file_size - info.tensor_bytes + tensor_total, file_type=qt.name,
        file_type_id=qt.ftype, tensor_bytes=tensor_total, tensors=tensors,
        tensor_types=tuple(TensorTypeTotal(name, count, size, elements)
                           for name, (count, size, elements) in sorted(totals.items())))
