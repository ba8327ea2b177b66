"""A real GGUF model of a chosen size, whole or split (``stem-0000N-of-0000M.gguf``), as bytes.

Parts are written the way llama.cpp's gguf-split names and tags them, with random tensor data
(so every part has its own SHA-256), and the library reads the set as one model: a test can
check that a half-downloaded set is never offered while the finished one is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np


def split_model_parts(stem: str, n_parts: int, part_bytes: int | Sequence[int],
                      seed: int = 0) -> dict[str, bytes]:
    """File name → bytes of each part; part i holds about ``part_bytes`` (or ``part_bytes[i]``)
    of F32 weights. One part is a plain ``stem.gguf`` with no split keys."""
    rng = np.random.default_rng(seed)
    sizes = [part_bytes] * n_parts if isinstance(part_bytes, int) else list(part_bytes)
    parts: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, size in enumerate(sizes):
            name = f"{stem}-{i + 1:05d}-of-{n_parts:05d}.gguf" if n_parts > 1 else f"{stem}.gguf"
            path = Path(tmp) / name
            writer = gguf.GGUFWriter(str(path), "llama")
            if n_parts > 1:
                writer.add_uint16("split.no", i)
                writer.add_uint16("split.count", n_parts)
                writer.add_int32("split.tensors.count", n_parts)
            if i == 0:
                writer.add_block_count(1)
                writer.add_embedding_length(256)
                writer.add_head_count(2)
            rows = max(1, size // (256 * 4))
            writer.add_tensor(f"t{i}.weight", rng.standard_normal((rows, 256), dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            parts[name] = path.read_bytes()
    return parts
