"""The GGUF layout, read from untrusted bytes: header, metadata values, tensor table.

This is the low-level half of ``app.core.gguf_info`` (which turns what is read here into a
``ModelInfo``). It reads from a buffer that holds either the whole file (a memory map) or only
its beginning (a header fetched over HTTP Range requests), given the file's total size. It does
not use ``gguf.GGUFReader``: that builds a numpy view for every vocabulary string, which takes
2.3 s for SmolLM2's 49k tokens and several seconds for 128k-token vocabularies.

Every count and length is checked against the bytes the *file* has left before anything is
read or allocated from it, so a corrupt header costs neither time nor memory. When the file
would have the bytes but the *buffer* ends first, ``HeaderIncomplete`` says how far the buffer
must reach at least; a memory-mapped file never raises it. The layout rules are llama.cpp's own
(``gguf.cpp``: key and tensor names, dimensions, ggml types, alignment, where each tensor's
data lies).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

GGUF_MAGIC = b"GGUF"
# Smallest possible records: a tensor info is a name length, a dimension count, a type and an
# offset (an empty name and no dimensions are legal); a key/value is a key length, a one-byte
# key, a type and a one-byte value. A header that claims more than the file can hold is lying.
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
_MIN_KV_BYTES = 8 + 1 + 4 + 1
MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses tensor names this long or longer
_INT64_LIMIT = 1 << 63  # llama.cpp holds dimensions and element counts in int64
_DEFAULT_ALIGNMENT = 32

Buffer = bytes | mmap.mmap


class GGUFError(Exception):
    """A file could not be read as a GGUF model; the message says why and what to do."""


class HeaderIncomplete(Exception):
    """The buffer ends before the header does (only a prefix of the file was fetched).

    ``needed`` is a lower bound on the buffer's length that gets further; the caller fetches
    more and parses again.
    """

    def __init__(self, needed: int) -> None:
        super().__init__(f"the header needs at least {needed:,} bytes")
        self.needed = needed


class Damaged(Exception):
    """A fault found while parsing; the caller adds the file's name and makes it a GGUFError."""


class Truncated(Damaged):
    """The file ends before something it announces (cut off, or a corrupt length)."""


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


UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12
TYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string",
              "array", "uint64", "int64", "float64")
_SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I",
                   INT32: "<i", FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q",
                   FLOAT64: "<d"}
_SCALARS = {vtype: struct.Struct(fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
INTEGER_TYPES = frozenset({UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64})
_U32, _U64 = _SCALARS[UINT32], _SCALARS[UINT64]
_DIMS = tuple(struct.Struct(f"<{n}Q") for n in range(MAX_DIMS + 1))
KEEP_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer values)
# ggml types by number: name, elements per block, bytes per block. A type without a usable size
# is left out, so a tensor of that type is refused rather than divided by zero.
_GGML_TYPES: dict[int, tuple[str, int, int]] = {
    int(t): (t.name, *gguf.GGML_QUANT_SIZES[t])
    for t in gguf.GGMLQuantizationType
    if t in gguf.GGML_QUANT_SIZES and min(gguf.GGML_QUANT_SIZES[t]) > 0
}


@dataclass(frozen=True)
class Array:
    """A metadata array: its element type and length, and its elements where they are kept
    (numeric arrays up to ``KEEP_ARRAY`` long; string arrays, a vocabulary, are only counted)."""

    item_type: int
    count: int
    items: tuple[Any, ...] | None


Value = str | int | float | bool | Array


def show(text: str, limit: int = 60) -> str:
    """A name read from the file, quoted (control characters escaped) and cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def describe(value: Value) -> str:
    """What a metadata value is, for a message ('a string ('abc')', 'a number (nan)')."""
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"an integer ({value:,})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({show(value)})"
    return f"an array of {value.count:,} {TYPE_NAMES[value.item_type]} values"


class _Reader:
    """Sequential little-endian reader over the file's first ``len(data)`` bytes; ``size`` is
    the whole file's. Never reads tensor data."""

    def __init__(self, data: Buffer, size: int) -> None:
        self.data = data
        self.available = len(data)
        self.size = size
        self.pos = 0

    def take(self, n: int, what: str) -> int:
        """Claim the next ``n`` bytes and return where they start: the check comes before any
        read or allocation, so a corrupt length costs nothing."""
        start = self.pos
        if n > self.size - start:
            if n > self.size:
                raise Truncated(f"{what} claims {n:,} bytes, more than the whole file")
            raise Truncated(f"{what} runs past the end of the file")
        if start + n > self.available:
            raise HeaderIncomplete(start + n)
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
            raise Truncated(f"{what} claims {count:,} strings, more than the rest of the file "
                            "can hold")
        data, pos, unpack = self.data, self.pos, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(data, pos)[0]
        except (struct.error, OverflowError):  # a length ran past the buffer (or past 2^63)
            if pos + 8 <= self.size and self.available < self.size:
                raise HeaderIncomplete(max(pos + 8, self.available + 1)) from None
            raise Truncated(f"{what} runs past the end of the file") from None
        if pos > self.size:
            raise Truncated(f"{what} runs past the end of the file")
        if pos > self.available:
            raise HeaderIncomplete(pos)
        self.pos = pos

    def value(self, vtype: int, what: str) -> Value:
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            result: Value = scalar.unpack_from(self.data, self.take(scalar.size, what))[0]
            return result
        if vtype == STRING:
            return self.string(what)
        if vtype != ARRAY:
            raise Damaged(f"{what} has unknown value type {vtype:,}")
        item_type = self.u32(f"the element type of {what}")
        count = self.u64(f"the length of {what}")
        if item_type == STRING:
            self.skip_strings(count, what)
            return Array(STRING, count, None)
        item = _SCALARS.get(item_type)
        if item is None:
            kind = "arrays" if item_type == ARRAY else f"unknown type {item_type:,}"
            raise Damaged(f"{what} is an array of {kind}, which llama.cpp does not read")
        start = self.take(count * item.size, what)
        if count > KEEP_ARRAY:
            return Array(item_type, count, None)
        items = np.frombuffer(self.data, item.format, count, start).tolist()
        return Array(item_type, count, tuple(items))


@dataclass(frozen=True)
class Header:
    """One file's metadata and tensor table (where each tensor's data lies in that file)."""

    path: Path
    metadata: dict[str, Value]
    tensors: tuple[TensorInfo, ...]
    size: int  # the whole file's bytes
    header_bytes: int  # where the tensor data starts: what had to be read


def parse(data: Buffer, size: int, path: Path) -> Header:
    """Read the header of the ``size``-byte file ``path`` from its first ``len(data)`` bytes.

    Raises GGUFError (not GGUF, wrong version, impossible counts, tensors outside the file),
    Damaged or Truncated (the caller names the file), or HeaderIncomplete when the file may
    be fine but ``data`` ends before its header does.
    """
    if data[:4] != GGUF_MAGIC:
        if len(data) < 4 < size:
            raise HeaderIncomplete(4)
        raise GGUFError(
            f"{path.name} is not a GGUF model file (it does not start with 'GGUF'). "
            "QuantDesk runs GGUF files; a Hugging Face checkpoint can be converted first."
        )
    r = _Reader(data, size)
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
    metadata: dict[str, Value] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        key = r.string(f"the key of metadata entry {i}")
        if not key:
            raise Damaged(f"metadata entry {i} has an empty key")
        if key in metadata:
            raise Damaged(f"metadata key {show(key)} appears twice")
        what = f"metadata {show(key)}"
        types[key] = vtype = r.u32(f"the type of {what}")
        metadata[key] = r.value(vtype, what)
    alignment = _alignment(metadata, types)

    infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        raw_name = r.raw_string(f"the name of tensor {i}")
        name = raw_name.decode("utf-8", errors="replace")
        what = f"tensor {show(name)}"
        if len(raw_name) >= _MAX_NAME:
            raise Damaged(f"the name of tensor {i} ({show(name)}) is {len(raw_name):,} bytes; "
                          f"llama.cpp accepts at most {_MAX_NAME - 1}")
        if name in names:
            raise Damaged(f"{what} appears twice in the tensor table")
        names.add(name)
        n_dims = r.u32(f"the dimension count of {what}")
        if n_dims > MAX_DIMS:
            raise Damaged(f"{what} claims {n_dims:,} dimensions; ggml has at most {MAX_DIMS}")
        dims = _DIMS[n_dims].unpack_from(data, r.take(8 * n_dims, f"the shape of {what}"))
        n_elements = math.prod(dims)
        if max(dims, default=0) >= _INT64_LIMIT or n_elements >= _INT64_LIMIT:
            raise Damaged(f"{what} claims shape {list(dims)}, more elements than ggml can hold")
        raw_type = r.u32(f"the type of {what}")
        ggml_type = _GGML_TYPES.get(raw_type)
        if ggml_type is None:
            raise Damaged(f"{what} has unknown ggml type {raw_type:,} (a damaged file, or one "
                          "that needs a newer QuantDesk)")
        type_name, block, type_size = ggml_type
        row = dims[0] if dims else 1
        if row % block:
            raise Damaged(f"{what} has rows of {row:,} values, not a whole number of "
                          f"{type_name} blocks of {block}")
        offset = r.u64(f"the data offset of {what}")
        if offset % alignment:
            raise Damaged(f"{what} starts at data offset {offset:,}, not a multiple of the "
                          f"file's alignment ({alignment})")
        infos.append((name, dims, type_name, n_elements // block * type_size, offset))

    data_start = -(-r.pos // alignment) * alignment if infos else r.pos
    if data_start > r.size:
        raise Truncated("the padding before the tensor data runs past the end of the file")
    tensors = tuple(TensorInfo(name, type_name, dims, n_bytes, path, data_start + offset)
                    for name, dims, type_name, n_bytes, offset in infos)
    _check_placement(path, tensors, r.size)
    return Header(path, metadata, tensors, r.size, data_start)


def _alignment(metadata: dict[str, Value], types: dict[str, int]) -> int:
    """The data alignment, checked the way llama.cpp checks it (a uint32 power of two)."""
    value = metadata.get("general.alignment")
    if value is None:
        return _DEFAULT_ALIGNMENT
    if types["general.alignment"] != UINT32 or not isinstance(value, int):
        raise Damaged(f"'general.alignment' is {describe(value)}; GGUF requires a uint32")
    if value == 0 or value & (value - 1):
        raise Damaged(f"'general.alignment' is {value:,}, not a power of two")
    return value


def _check_placement(path: Path, tensors: tuple[TensorInfo, ...], size: int) -> None:
    """Every tensor's data lies inside the file and no two tensors share bytes."""
    end_of_data, last = 0, None
    for t in sorted(tensors, key=lambda t: (t.offset, t.n_bytes)):
        end = t.offset + t.n_bytes
        if end > size:
            raise GGUFError(
                f"{path.name} is truncated: its tensors need {end:,} bytes (tensor "
                f"{show(t.name)} ends there) but it has only {size:,}. It was probably cut off "
                "while downloading or copying, or is damaged; get it again."
            )
        if last is not None and t.offset < end_of_data:
            raise GGUFError(f"{path.name} is damaged: the data of tensors {show(last)} and "
                            f"{show(t.name)} overlap. Download or convert it again.")
        if end >= end_of_data:
            end_of_data, last = end, t.name
