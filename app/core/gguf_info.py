"""Read what a GGUF file is, without loading its weights.

``read_model_info`` memory-maps the file and reads only the header, the metadata and the tensor
table, with the ``gguf`` package's type tables (value types, ggml block sizes). It does not use
``gguf.GGUFReader``: that builds a numpy view for every vocabulary string, which takes 2.3 s for
SmolLM2's 49k tokens and several seconds for 128k-token vocabularies, too slow to scan a library.
A file that is not GGUF, is truncated, or whose header makes impossible claims raises
``GGUFError`` with a message a person can act on, quickly and without reading the tensor data.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from app.core import quant_types

GGUF_MAGIC = b"GGUF"
_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# Smallest possible size of one tensor-info record and one key/value record in a GGUF header;
# a header that claims more records than the file could hold is lying.
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8
_MIN_KV_BYTES = 8 + 1 + 4 + 1


class GGUFError(Exception):
    """A file could not be read as a GGUF model; the message says why and what to do."""


@dataclass(frozen=True)
class TensorTypeTotal:
    """How many tensors of one ggml type a model has, and their bytes."""

    type_name: str
    count: int
    n_bytes: int
    n_elements: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: name, ggml type, shape (ggml order: ne0 is the row length) and bytes."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    n_bytes: int
    file: Path | None = None  # the file (split part) holding the data, and where it starts
    offset: int = 0

    @property
    def layer(self) -> int | None:
        """The block index for ``blk.N.*`` tensors, else None."""
        if not self.name.startswith("blk."):
            return None
        index = self.name.split(".", 2)[1]
        return int(index) if index.isdigit() else None


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF model is: dimensions, type, tensors. Sizes cover all split parts."""

    path: Path
    file_size: int
    architecture: str
    name: str | None
    n_params: int
    n_layers: int
    n_embd: int
    n_ff: int | None
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int
    n_experts: int | None
    sliding_window: int | None
    sliding_window_pattern: int | None
    file_type: str
    file_type_id: int | None
    tensor_types: tuple[TensorTypeTotal, ...]
    tensor_bytes: int
    has_chat_template: bool
    chat_template: str | None = field(repr=False)
    split_count: int = 1
    split_files: tuple[Path, ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per parameter over all tensors."""
        return self.tensor_bytes * 8 / self.n_params if self.n_params else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, the chat template left out for brevity)."""
        return {
            "path": str(self.path),
            "file_size": self.file_size,
            "architecture": self.architecture,
            "name": self.name,
            "n_params": self.n_params,
            "n_layers": self.n_layers,
            "n_embd": self.n_embd,
            "n_ff": self.n_ff,
            "n_head": self.n_head,
            "n_head_kv": self.n_head_kv,
            "head_dim_k": self.head_dim_k,
            "head_dim_v": self.head_dim_v,
            "n_ctx_train": self.n_ctx_train,
            "n_vocab": self.n_vocab,
            "n_experts": self.n_experts,
            "sliding_window": self.sliding_window,
            "sliding_window_pattern": self.sliding_window_pattern,
            "file_type": self.file_type,
            "file_type_id": self.file_type_id,
            "bits_per_weight": round(self.bits_per_weight, 3),
            "tensor_bytes": self.tensor_bytes,
            "tensor_types": [
                {"type": t.type_name, "count": t.count, "bytes": t.n_bytes,
                 "elements": t.n_elements}
                for t in self.tensor_types
            ],
            "has_chat_template": self.has_chat_template,
            "split_count": self.split_count,
            "split_files": [str(p) for p in self.split_files],
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }


class _ArrayLen(int):
    """Stands in for an array whose elements are not kept (string arrays, long arrays)."""


_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NP_TYPES: dict[int, str] = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
                             7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_KEEP_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer values)


class _Truncated(Exception):
    pass


class _HeaderReader:
    """Sequential little-endian reader over a memory-mapped file; never reads tensor data."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise _Truncated
        self.pos += n
        return start

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack_from(fmt, self.data, self.take(size))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.data[start:start + n]).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """Step over ``count`` length-prefixed strings (a vocabulary: tight loop, no checks
        inside; the end is checked once)."""
        data, pos, unpack = self.data, self.pos, struct.Struct("<Q").unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(data, pos)[0]
        except struct.error:
            raise _Truncated from None
        if pos > len(data):
            raise _Truncated
        self.pos = pos

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata value type {vtype}")
        sub, count = self.scalar("<I"), self.scalar("<Q")
        if sub == _STRING:
            self.skip_strings(count)
            return _ArrayLen(count)
        if sub not in _NP_TYPES:
            raise ValueError(f"unsupported array element type {sub}")
        itemsize = np.dtype(_NP_TYPES[sub]).itemsize
        start = self.take(count * itemsize)
        if count > _KEEP_ARRAY:
            return _ArrayLen(count)
        return np.frombuffer(self.data, _NP_TYPES[sub], count, start).tolist()


@dataclass(frozen=True)
class _Parsed:
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]


def _parse(path: Path) -> _Parsed:
    """Read metadata and the tensor table of one GGUF file; raise GGUFError when broken."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise GGUFError(f"{path} does not exist.") from None
    except OSError as exc:
        raise GGUFError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    if not path.is_file():
        raise GGUFError(f"{path} is not a file.")
    if size < 4:
        raise GGUFError(f"{path.name} is not a GGUF model file (it is only {size} bytes).")
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                  access=mmap.ACCESS_READ) as data:
            return _parse_mapped(path, data, size)
    except PermissionError:
        raise GGUFError(f"{path} cannot be read: permission denied.") from None
    except _Truncated:
        raise GGUFError(f"{path.name} is truncated: it ends inside its GGUF header. It was "
                        "probably cut off while downloading or copying; get it again.") from None
    except (ValueError, OSError, struct.error) as exc:
        raise GGUFError(f"{path.name} is damaged: its GGUF header could not be read ({exc}). "
                        "Download or convert it again.") from None


def _parse_mapped(path: Path, data: mmap.mmap, size: int) -> _Parsed:
    if data[:4] != GGUF_MAGIC:
        raise GGUFError(
            f"{path.name} is not a GGUF model file (it does not start with 'GGUF'). "
            "QuantDesk runs GGUF files; a Hugging Face checkpoint can be converted first."
        )
    r = _HeaderReader(data)
    r.take(4)
    version = r.scalar("<I")
    if version & 0xFFFF == 0:
        raise GGUFError(f"{path.name} is a big-endian GGUF file; llama.cpp on this machine "
                        "needs little-endian files.")
    if version not in (2, 3):
        raise GGUFError(f"{path.name} is GGUF version {version}; QuantDesk reads versions 2 and 3.")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    if n_tensors * _MIN_TENSOR_INFO_BYTES > size or n_kv * _MIN_KV_BYTES > size:
        raise GGUFError(
            f"{path.name} has a corrupt header: it claims {n_tensors:,} tensors and {n_kv:,} "
            f"metadata entries, more than a {size:,}-byte file can hold."
        )
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar("<I")
        if not 1 <= n_dims <= 4:
            raise GGUFError(f"{path.name} is damaged: tensor {name!r} claims {n_dims} dimensions.")
        dims = [r.scalar("<Q") for _ in range(n_dims)]
        raw_type, offset = r.scalar("<I"), r.scalar("<Q")
        infos.append((name, dims, raw_type, offset))
    alignment = int(metadata.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path.name} is damaged: invalid alignment {alignment}.")
    data_start = -(-r.pos // alignment) * alignment
    tensors = []
    for name, dims, raw_type, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            raise GGUFError(
                f"tensor {name!r} has unknown type {raw_type}; this file needs a newer QuantDesk."
            ) from None
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_elements = int(np.prod(dims, dtype=np.float64))
        n_bytes = n_elements * type_size // block
        end = data_start + offset + n_bytes
        if end > size:
            raise GGUFError(
                f"{path.name} is truncated: its tensors need {end:,} bytes but it has only "
                f"{size:,}. It was probably cut off while downloading or copying; get it again."
            )
        tensors.append(TensorInfo(name, qtype.name, tuple(int(d) for d in dims), n_bytes,
                                  path, data_start + offset))
    return _Parsed(metadata, tuple(tensors))


def split_parts(path: Path) -> tuple[Path, ...]:
    """All parts of a split GGUF (``x-00001-of-00003.gguf``) in order, or just ``path``."""
    match = _SPLIT_RE.match(path.name)
    if not match:
        return (path,)
    count = int(match["count"])
    return tuple(
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    )


def _int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if value is None or isinstance(value, _ArrayLen):
        return None
    if isinstance(value, list):  # per-layer values (e.g. head_count_kv on some models)
        return max(int(v) for v in value) if value else None
    return int(value)


def _str(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None


def _sliding_pattern(meta: dict[str, Any], arch: str) -> int | None:
    value = meta.get(f"{arch}.attention.sliding_window_pattern")
    if value is None or isinstance(value, _ArrayLen):
        return None
    if isinstance(value, list):  # per-layer flags: report the period of the pattern
        non_swa = [i for i, swa in enumerate(value) if not swa]
        return non_swa[0] + 1 if non_swa else None
    return int(value)


def _vocab_size(meta: dict[str, Any], arch: str) -> int:
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (list, _ArrayLen)):
        return len(tokens) if isinstance(tokens, list) else int(tokens)
    return _int(meta, f"{arch}.vocab_size") or 0


def read_model_info(path: Path | str) -> ModelInfo:
    """Inspect a GGUF file (the first part, for a split model); raise GGUFError when broken."""
    path = Path(path)
    first = _parse(path)
    meta = first.metadata
    parts = split_parts(path)
    split_count = _int(meta, "split.count") or 1
    if split_count > 1 and len(parts) != split_count:
        raise GGUFError(f"{path.name} is part of a {split_count}-part model but its name does not "
                        "follow the '-0000N-of-0000M.gguf' pattern; keep the original file names.")
    parsed = [first]
    for part in parts[1:]:
        if not part.exists():
            raise GGUFError(f"{path.name} is part of a {split_count}-part model; {part.name} is "
                            "missing. Download all parts into the same folder.")
        parsed.append(_parse(part))

    arch = _str(meta, "general.architecture")
    if arch is None:
        raise GGUFError(f"{path.name} has no 'general.architecture': it is not a model file.")

    totals: dict[str, list[int]] = {}
    for one in parsed:
        for t in one.tensors:
            entry = totals.setdefault(t.type_name, [0, 0, 0])
            entry[0] += 1
            entry[1] += t.n_bytes
            entry[2] += math.prod(t.shape)
    tensor_types = tuple(
        TensorTypeTotal(name, c, b, e)
        for name, (c, b, e) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    )

    n_embd = _int(meta, f"{arch}.embedding_length") or 0
    n_head = _int(meta, f"{arch}.attention.head_count") or 0
    default_head_dim = n_embd // n_head if n_head else 0
    file_type_id = _int(meta, "general.file_type")
    template = _str(meta, "tokenizer.chat_template")
    return ModelInfo(
        path=path,
        file_size=sum(p.stat().st_size for p in parts),
        architecture=arch,
        name=_str(meta, "general.name"),
        n_params=sum(t.n_elements for t in tensor_types),
        n_layers=_int(meta, f"{arch}.block_count") or 0,
        n_embd=n_embd,
        n_ff=_int(meta, f"{arch}.feed_forward_length"),
        n_head=n_head,
        n_head_kv=_int(meta, f"{arch}.attention.head_count_kv") or n_head,
        head_dim_k=_int(meta, f"{arch}.attention.key_length") or default_head_dim,
        head_dim_v=_int(meta, f"{arch}.attention.value_length") or default_head_dim,
        n_ctx_train=_int(meta, f"{arch}.context_length") or 0,
        n_vocab=_vocab_size(meta, arch),
        n_experts=_int(meta, f"{arch}.expert_count"),
        sliding_window=_int(meta, f"{arch}.attention.sliding_window"),
        sliding_window_pattern=_sliding_pattern(meta, arch),
        file_type=quant_types.ftype_name(file_type_id),
        file_type_id=file_type_id,
        tensor_types=tensor_types,
        tensor_bytes=sum(t.n_bytes for t in tensor_types),
        has_chat_template=bool(template and template.strip()),
        chat_template=template,
        split_count=split_count,
        split_files=parts if split_count > 1 else (),
        bos_token_id=_int(meta, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_int(meta, "tokenizer.ggml.eos_token_id"),
        tensors=tuple(t for one in parsed for t in one.tensors),
    )
