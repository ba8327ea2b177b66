"""Read what a GGUF file is, without loading its weights.

``read_model_info`` memory-maps the file and reads only the header, the metadata and the tensor
table, with the ``gguf`` package's type tables (value types, ggml block sizes). It does not use
``gguf.GGUFReader``: that builds a numpy view for every vocabulary string, which takes 2.3 s for
SmolLM2's 49k tokens and several seconds for 128k-token vocabularies, too slow to scan a library.

The file is untrusted. Every count and length is checked against the bytes that remain before
anything is read or allocated from it, so a corrupt header costs neither time nor memory; every
metadata value a ``ModelInfo`` field comes from is checked for its type and a sensible range
where it is read; the layout rules are llama.cpp's own (``gguf.cpp``: key and tensor names,
dimensions, ggml types, alignment, where each tensor's data lies). Whatever is wrong, the caller
gets ``GGUFError`` with a message that names the file and the fault, never another exception.
"""

from __future__ import annotations

import math
import mmap
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from app.core import quant_types

GGUF_MAGIC = b"GGUF"
_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# Smallest possible records: a tensor info is a name length, a dimension count, a type and an
# offset (an empty name and no dimensions are legal); a key/value is a key length, a one-byte
# key, a type and a one-byte value. A header that claims more than the file can hold is lying.
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses tensor names this long or longer
_INT64_LIMIT = 1 << 63  # llama.cpp holds dimensions and element counts in int64
_DEFAULT_ALIGNMENT = 32

# Sensible ranges for the metadata a ModelInfo is made of. They reject corrupt values while
# leaving every real model far inside: consumers loop over layers and multiply the widths.
_U32_MAX = (1 << 32) - 1  # llama.cpp reads contexts, token ids and file types as uint32
_MAX_LAYERS = 4096  # llama.cpp's own limit is 512 (LLAMA_MAX_LAYERS)
_MAX_WIDTH = 1 << 22  # embedding, feed-forward, heads, head dims, experts: real ones are < 2^18
_MAX_SPLIT = 99_999  # split part names carry five digits


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
        # ASCII only: str.isdigit() also accepts digits such as "²", which int() refuses
        return int(index) if index.isascii() and index.isdigit() else None


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


_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_TYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string",
               "array", "uint64", "int64", "float64")
_SCALAR_FORMATS = {_UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I",
                   _INT32: "<i", _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q",
                   _FLOAT64: "<d"}
_SCALARS = {vtype: struct.Struct(fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
_INTEGER_TYPES = frozenset({_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64})
_U32, _U64 = _SCALARS[_UINT32], _SCALARS[_UINT64]
_DIMS = tuple(struct.Struct(f"<{n}Q") for n in range(_MAX_DIMS + 1))
_KEEP_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer values)
# ggml types by number: name, elements per block, bytes per block. A type without a usable size
# is left out, so a tensor of that type is refused rather than divided by zero.
_GGML_TYPES: dict[int, tuple[str, int, int]] = {
    int(t): (t.name, *gguf.GGML_QUANT_SIZES[t])
    for t in gguf.GGMLQuantizationType
    if t in gguf.GGML_QUANT_SIZES and min(gguf.GGML_QUANT_SIZES[t]) > 0
}


@dataclass(frozen=True)
class _Array:
    """A metadata array: its element type and length, and its elements where they are kept
    (numeric arrays up to ``_KEEP_ARRAY`` long; string arrays, a vocabulary, are only counted)."""

    item_type: int
    count: int
    items: tuple[Any, ...] | None


_Value = str | int | float | bool | _Array


class _Damaged(Exception):
    """A fault found while parsing; ``_parse`` adds the file's name and makes it a GGUFError."""


class _Truncated(_Damaged):
    """The file ends before something it announces (cut off, or a corrupt length)."""


def _show(text: str, limit: int = 60) -> str:
    """A name read from the file, quoted (control characters escaped) and cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


class _Reader:
    """Sequential little-endian reader over a memory-mapped file; never reads tensor data."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 0

    def take(self, n: int, what: str) -> int:
        """Claim the next ``n`` bytes and return where they start: the check comes before any
        read or allocation, so a corrupt length costs nothing."""
        start = self.pos
        if n > self.size - start:
            if n > self.size:
                raise _Truncated(f"{what} claims {n:,} bytes, more than the whole file")
            raise _Truncated(f"{what} runs past the end of the file")
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        return int(_U32.unpack_from(self.data, self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(_U64.unpack_from(self.data, self.take(8, what))[0])

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"the length of {what}")
        start = self.take(n, what)
        return self.data[start:start + n]

    def string(self, what: str) -> str:
        return self.raw_string(what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Step over ``count`` length-prefixed strings (a vocabulary: a tight loop, the end
        checked once)."""
        # Each string takes at least its 8-byte length, so a count the rest of the file cannot
        # hold is refused at once and the loop is bounded by the file's size.
        if count > (self.size - self.pos) // 8:
            raise _Truncated(f"{what} claims {count:,} strings, more than the rest of the file "
                             "can hold")
        data, pos, unpack = self.data, self.pos, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(data, pos)[0]
        except (struct.error, OverflowError):  # a length ran past the end (or past 2^63)
            raise _Truncated(f"{what} runs past the end of the file") from None
        if pos > self.size:
            raise _Truncated(f"{what} runs past the end of the file")
        self.pos = pos

    def value(self, vtype: int, what: str) -> _Value:
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            result: _Value = scalar.unpack_from(self.data, self.take(scalar.size, what))[0]
            return result
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            raise _Damaged(f"{what} has unknown value type {vtype:,}")
        item_type = self.u32(f"the element type of {what}")
        count = self.u64(f"the length of {what}")
        if item_type == _STRING:
            self.skip_strings(count, what)
            return _Array(_STRING, count, None)
        item = _SCALARS.get(item_type)
        if item is None:
            kind = "arrays" if item_type == _ARRAY else f"unknown type {item_type:,}"
            raise _Damaged(f"{what} is an array of {kind}, which llama.cpp does not read")
        start = self.take(count * item.size, what)
        if count > _KEEP_ARRAY:
            return _Array(item_type, count, None)
        items = np.frombuffer(self.data, item.format, count, start).tolist()
        return _Array(item_type, count, tuple(items))


@dataclass(frozen=True)
class _Parsed:
    metadata: dict[str, _Value]
    tensors: tuple[TensorInfo, ...]
    size: int


def _parse(path: Path) -> _Parsed:
    """Read metadata and the tensor table of one GGUF file; raise GGUFError when broken."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise GGUFError(f"{path} does not exist.") from None
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        raise GGUFError(f"{path} cannot be read: {getattr(exc, 'strerror', None) or exc}.") \
            from None
    if not stat.S_ISREG(st.st_mode):
        raise GGUFError(f"{path} is not a file.")
    if st.st_size < 4:
        raise GGUFError(f"{path.name} is not a GGUF model file (it is only {st.st_size} bytes).")
    try:
        handle = path.open("rb")
    except PermissionError:
        raise GGUFError(f"{path} cannot be read: permission denied.") from None
    except OSError as exc:
        raise GGUFError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    with handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: it became empty since the stat
            raise GGUFError(f"{path} cannot be read: {exc}.") from None
        with data:
            try:
                return _parse_mapped(path, data)
            except _Truncated as exc:
                raise GGUFError(
                    f"{path.name} is truncated or damaged: {exc} ({len(data):,} bytes). It was "
                    "probably cut off while downloading or copying; get it again.") from None
            except _Damaged as exc:
                raise GGUFError(f"{path.name} is damaged: {exc}. Download or convert it again.") \
                    from None


def _parse_mapped(path: Path, data: mmap.mmap) -> _Parsed:
    if data[:4] != GGUF_MAGIC:
        raise GGUFError(
            f"{path.name} is not a GGUF model file (it does not start with 'GGUF'). "
            "QuantDesk runs GGUF files; a Hugging Face checkpoint can be converted first."
        )
    r = _Reader(data)
    r.take(4, "the magic")
    version = r.u32("the header")
    if version not in (2, 3):
        if version and version & 0xFFFF == 0:
            raise GGUFError(f"{path.name} is a big-endian GGUF file; llama.cpp on this machine "
                            "needs little-endian files.")
        raise GGUFError(f"{path.name} is GGUF version {version}; QuantDesk reads versions 2 "
                        "and 3.")
    n_tensors, n_kv = r.u64("the header"), r.u64("the header")
    if n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES > r.size - r.pos:
        raise GGUFError(
            f"{path.name} is truncated or has a corrupt header: it claims {n_tensors:,} tensors "
            f"and {n_kv:,} metadata entries, more than a {r.size:,}-byte file can hold."
        )
    metadata: dict[str, _Value] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        key = r.string(f"the key of metadata entry {i}")
        if not key:
            raise _Damaged(f"metadata entry {i} has an empty key")
        if key in metadata:
            raise _Damaged(f"metadata key {_show(key)} appears twice")
        what = f"metadata {_show(key)}"
        types[key] = vtype = r.u32(f"the type of {what}")
        metadata[key] = r.value(vtype, what)
    alignment = _alignment(metadata, types)

    infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        raw_name = r.raw_string(f"the name of tensor {i}")
        name = raw_name.decode("utf-8", errors="replace")
        what = f"tensor {_show(name)}"
        if len(raw_name) >= _MAX_NAME:
            raise _Damaged(f"the name of tensor {i} ({_show(name)}) is {len(raw_name):,} bytes; "
                           f"llama.cpp accepts at most {_MAX_NAME - 1}")
        if name in names:
            raise _Damaged(f"{what} appears twice in the tensor table")
        names.add(name)
        n_dims = r.u32(f"the dimension count of {what}")
        if n_dims > _MAX_DIMS:
            raise _Damaged(f"{what} claims {n_dims:,} dimensions; ggml has at most {_MAX_DIMS}")
        dims = _DIMS[n_dims].unpack_from(data, r.take(8 * n_dims, f"the shape of {what}"))
        n_elements = math.prod(dims)
        if max(dims, default=0) >= _INT64_LIMIT or n_elements >= _INT64_LIMIT:
            raise _Damaged(f"{what} claims shape {list(dims)}, more elements than ggml can hold")
        raw_type = r.u32(f"the type of {what}")
        ggml_type = _GGML_TYPES.get(raw_type)
        if ggml_type is None:
            raise _Damaged(f"{what} has unknown ggml type {raw_type:,} (a damaged file, or one "
                           "that needs a newer QuantDesk)")
        type_name, block, type_size = ggml_type
        row = dims[0] if dims else 1
        if row % block:
            raise _Damaged(f"{what} has rows of {row:,} values, not a whole number of "
                           f"{type_name} blocks of {block}")
        offset = r.u64(f"the data offset of {what}")
        if offset % alignment:
            raise _Damaged(f"{what} starts at data offset {offset:,}, not a multiple of the "
                           f"file's alignment ({alignment})")
        infos.append((name, dims, type_name, n_elements // block * type_size, offset))

    data_start = -(-r.pos // alignment) * alignment if infos else r.pos
    if data_start > r.size:
        raise _Truncated("the padding before the tensor data runs past the end of the file")
    tensors = tuple(TensorInfo(name, type_name, dims, n_bytes, path, data_start + offset)
                    for name, dims, type_name, n_bytes, offset in infos)
    _check_placement(path, tensors, r.size)
    return _Parsed(metadata, tensors, r.size)


def _alignment(metadata: dict[str, _Value], types: dict[str, int]) -> int:
    """The data alignment, checked the way llama.cpp checks it (a uint32 power of two)."""
    value = metadata.get("general.alignment")
    if value is None:
        return _DEFAULT_ALIGNMENT
    if types["general.alignment"] != _UINT32 or not isinstance(value, int):
        raise _Damaged(f"'general.alignment' is {_describe(value)}; GGUF requires a uint32")
    if value == 0 or value & (value - 1):
        raise _Damaged(f"'general.alignment' is {value:,}, not a power of two")
    return value


def _check_placement(path: Path, tensors: tuple[TensorInfo, ...], size: int) -> None:
    """Every tensor's data lies inside the file and no two tensors share bytes."""
    end_of_data, last = 0, None
    for t in sorted(tensors, key=lambda t: (t.offset, t.n_bytes)):
        end = t.offset + t.n_bytes
        if end > size:
            raise GGUFError(
                f"{path.name} is truncated: its tensors need {end:,} bytes (tensor "
                f"{_show(t.name)} ends there) but it has only {size:,}. It was probably cut off "
                "while downloading or copying, or is damaged; get it again."
            )
        if last is not None and t.offset < end_of_data:
            raise GGUFError(f"{path.name} is damaged: the data of tensors {_show(last)} and "
                            f"{_show(t.name)} overlap. Download or convert it again.")
        if end >= end_of_data:
            end_of_data, last = end, t.name


def split_parts(path: Path) -> tuple[Path, ...]:
    """All parts of a split GGUF (``x-00001-of-00003.gguf``) in order, or just ``path``."""
    match = _SPLIT_RE.match(path.name)
    if not match:
        return (path,)
    count = int(match["count"])
    return tuple(
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    )


def _describe(value: _Value) -> str:
    """What a metadata value is, for a message ('a string ('abc')', 'a number (nan)')."""
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"an integer ({value:,})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    return f"an array of {value.count:,} {_TYPE_NAMES[value.item_type]} values"


class _Metadata:
    """One file's metadata, read with type and range checks: a wrong value is a GGUFError."""

    def __init__(self, values: dict[str, _Value], file_name: str) -> None:
        self.values = values
        self.file_name = file_name

    def error(self, key: str, problem: str) -> GGUFError:
        return GGUFError(f"{self.file_name} is damaged: its metadata {_show(key)} {problem}. "
                         "Download or convert it again.")

    def integer(self, key: str, lo: int, hi: int, *, per_layer: bool = False) -> int | None:
        """The integer at ``key`` in ``lo..hi``, None when absent. A ``per_layer`` key may hold
        one value per layer instead (each in ``0..hi``): the largest is returned."""
        value = self.values.get(key)
        if value is None:
            return None
        if per_layer and isinstance(value, _Array) and value.item_type in _INTEGER_TYPES:
            if value.items is None:
                raise self.error(key, f"holds {value.count:,} per-layer values, more than the "
                                      f"{_MAX_LAYERS:,} layers a model can have")
            if not value.items:
                return None
            low, value = min(value.items), max(value.items)
            if low < 0 or value > hi:
                raise self.error(key, f"holds per-layer values {low:,} to {value:,}, outside 0 "
                                      f"to {hi:,}")
        if type(value) is not int:  # a bool is an int to Python, not to GGUF
            raise self.error(key, f"is {_describe(value)}, where an integer belongs")
        if not lo <= value <= hi:
            raise self.error(key, f"is {value:,}, outside the sensible range {lo:,} to {hi:,}")
        return value

    def text(self, key: str) -> str | None:
        """The string at ``key``, None when absent."""
        value = self.values.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.error(key, f"is {_describe(value)}, where a string belongs")

    def vocab_size(self, arch: str) -> int:
        """The number of tokens: the vocabulary's length, else ``{arch}.vocab_size``, else 0."""
        tokens = self.values.get("tokenizer.ggml.tokens")
        if tokens is None:
            return self.integer(f"{arch}.vocab_size", 1, _U32_MAX) or 0
        if not isinstance(tokens, _Array) or tokens.item_type != _STRING:
            raise self.error("tokenizer.ggml.tokens",
                             f"is {_describe(tokens)}, where the array of token strings belongs")
        return tokens.count

    def sliding_pattern(self, arch: str) -> int | None:
        """The period of the sliding-window layer pattern: stored as a number, or as one flag per
        layer (true: sliding window) from which the period is read."""
        key = f"{arch}.attention.sliding_window_pattern"
        value = self.values.get(key)
        if not isinstance(value, _Array):
            return self.integer(key, 0, _MAX_LAYERS)
        if value.item_type != _BOOL and value.item_type not in _INTEGER_TYPES:
            raise self.error(key, f"is {_describe(value)}, where per-layer flags belong")
        if value.items is None:
            raise self.error(key, f"holds {value.count:,} per-layer flags, more than the "
                                  f"{_MAX_LAYERS:,} layers a model can have")
        non_swa = [i for i, swa in enumerate(value.items) if not swa]
        return non_swa[0] + 1 if non_swa else None


def read_model_info(path: Path | str) -> ModelInfo:
    """Inspect a GGUF file (the first part, for a split model); raise GGUFError when broken."""
    path = Path(path)
    first = _parse(path)
    split_count = _Metadata(first.metadata, path.name).integer("split.count", 0, _MAX_SPLIT) or 1
    # llama.cpp goes by split.count, not by the name: a lone file named like a part is one file
    parts = split_parts(path) if split_count > 1 else (path,)
    if len(parts) != split_count:
        raise GGUFError(f"{path.name} is part of a {split_count}-part model (its 'split.count') "
                        "but its name does not follow the '-0000N-of-0000M.gguf' pattern; keep "
                        "the original file names.")
    parsed = []
    for part in parts:
        if part == path:
            parsed.append(first)
        elif not part.exists():
            raise GGUFError(f"{path.name} is part of a {split_count}-part model; {part.name} is "
                            "missing. Download all parts into the same folder.")
        else:
            parsed.append(_parse(part))
    # The model's description is in the first part, whichever part was asked about.
    meta = _Metadata(parsed[0].metadata, parts[0].name)

    arch = meta.text("general.architecture")
    if arch is None:
        raise GGUFError(f"{path.name} has no 'general.architecture': it is not a model file.")
    if not arch:
        raise meta.error("general.architecture", "is empty")

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

    n_embd = meta.integer(f"{arch}.embedding_length", 1, _MAX_WIDTH) or 0
    # Head counts and feed-forward widths may be 0: state-space layers (Mamba, RWKV) have none.
    n_head = meta.integer(f"{arch}.attention.head_count", 0, _MAX_WIDTH, per_layer=True) or 0
    n_head_kv = meta.integer(f"{arch}.attention.head_count_kv", 0, _MAX_WIDTH, per_layer=True)
    default_head_dim = n_embd // n_head if n_head else 0
    file_type_id = meta.integer("general.file_type", 0, _U32_MAX)
    template = meta.text("tokenizer.chat_template")
    return ModelInfo(
        path=path,
        file_size=sum(one.size for one in parsed),
        architecture=arch,
        name=meta.text("general.name"),
        n_params=sum(t.n_elements for t in tensor_types),
        n_layers=meta.integer(f"{arch}.block_count", 0, _MAX_LAYERS) or 0,
        n_embd=n_embd,
        n_ff=meta.integer(f"{arch}.feed_forward_length", 0, _MAX_WIDTH, per_layer=True),
        n_head=n_head,
        n_head_kv=n_head_kv or n_head,
        head_dim_k=meta.integer(f"{arch}.attention.key_length", 1, _MAX_WIDTH)
        or default_head_dim,
        head_dim_v=meta.integer(f"{arch}.attention.value_length", 1, _MAX_WIDTH)
        or default_head_dim,
        n_ctx_train=meta.integer(f"{arch}.context_length", 1, _U32_MAX) or 0,
        n_vocab=meta.vocab_size(arch),
        n_experts=meta.integer(f"{arch}.expert_count", 0, _MAX_WIDTH),
        sliding_window=meta.integer(f"{arch}.attention.sliding_window", 0, _U32_MAX),
        sliding_window_pattern=meta.sliding_pattern(arch),
        file_type=quant_types.ftype_name(file_type_id),
        file_type_id=file_type_id,
        tensor_types=tensor_types,
        tensor_bytes=sum(t.n_bytes for t in tensor_types),
        has_chat_template=bool(template and template.strip()),
        chat_template=template,
        split_count=split_count,
        split_files=parts if split_count > 1 else (),
        bos_token_id=meta.integer("tokenizer.ggml.bos_token_id", 0, _U32_MAX),
        eos_token_id=meta.integer("tokenizer.ggml.eos_token_id", 0, _U32_MAX),
        tensors=tuple(t for one in parsed for t in one.tensors),
    )
