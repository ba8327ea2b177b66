"""Malformed GGUF files made from valid ones, for the robustness suite and the long fuzz run.

A valid file is first mapped (``layout``: where the header, each key/value, each tensor info,
the alignment padding and the data lie); the mutations then damage one part of it on purpose.
Every mutation class is a function ``(rng, base) -> Case`` so that the quick suite (driving
``rng`` from hypothesis) and ``bench/fuzz_gguf.py`` (a seeded ``random.Random``) make the same
files. ``truncations`` and ``replacements`` enumerate their classes exhaustively.

The GGUF encoding here is written from the format's description, independently of the reader
under test (``app.core.gguf_info``), so the two do not share a misunderstanding.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.tiny_model import write_tiny_llama

# GGUF value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12
SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
                  FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
HEADER_BYTES = 24
DEFAULT_ALIGNMENT = 32
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1

# --- encoding ------------------------------------------------------------------------------------


def encode_string(text: str | bytes) -> bytes:
    """A GGUF string: uint64 length, then the bytes (not NUL-terminated)."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def encode_payload(vtype: int, value: object) -> bytes:
    """A value without its type field. An array's value is ``(item_type, [items])``; an array
    of arrays is ``(ARRAY, [(item_type, [items]), ...])``."""
    if vtype in SCALAR_FORMATS:
        return struct.pack(SCALAR_FORMATS[vtype], value)
    if vtype == STRING:
        assert isinstance(value, (str, bytes))
        return encode_string(value)
    assert vtype == ARRAY and isinstance(value, tuple)
    item_type, items = value
    return struct.pack("<IQ", item_type, len(items)) + b"".join(
        encode_payload(item_type, item) for item in items)


def encode_kv(key: str | bytes, vtype: int, value: object) -> bytes:
    """One metadata record: key, value type, value."""
    return encode_string(key) + struct.pack("<I", vtype) + encode_payload(vtype, value)


def encode_tensor_info(name: str, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    """One tensor-table record (shape in ggml order: row length first)."""
    return (encode_string(name) + struct.pack("<I", len(shape))
            + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", ggml_type, offset))


def pad(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


# --- layout of a valid file ----------------------------------------------------------------------


@dataclass(frozen=True)
class KV:
    """Where one metadata record lies."""

    key: str
    start: int  # its key's length field
    type_at: int  # its value-type field
    end: int
    vtype: int
    item_type: int | None  # arrays: element type (at type_at + 4), count at type_at + 8


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor-table record lies."""

    name: str
    start: int
    n_dims_at: int
    n_dims: int
    type_at: int  # the dims lie between n_dims_at + 4 and type_at
    offset_at: int
    end: int
    offset: int
    ggml_type: int


@dataclass(frozen=True)
class Layout:
    """The regions of a valid GGUF file."""

    size: int
    kvs: tuple[KV, ...]
    tensors: tuple[TensorRecord, ...]
    kv_end: int
    infos_end: int
    data_start: int
    alignment: int
    string_lengths: tuple[int, ...]  # offsets of string length fields (keys, values, names)

    def boundaries(self) -> list[tuple[str, int]]:
        """Named offsets where one region ends and the next begins."""
        marks = [("magic", 0), ("version", 4), ("tensor count", 8), ("kv count", 16)]
        for kv in self.kvs:
            marks += [(f"kv {kv.key} key", kv.start), (f"kv {kv.key} type", kv.type_at),
                      (f"kv {kv.key} value", kv.type_at + 4)]
            if kv.item_type is not None:
                marks += [(f"kv {kv.key} count", kv.type_at + 8),
                          (f"kv {kv.key} items", kv.type_at + 16)]
        for t in self.tensors:
            marks += [(f"tensor {t.name} name", t.start), (f"tensor {t.name} dims", t.n_dims_at),
                      (f"tensor {t.name} type", t.type_at),
                      (f"tensor {t.name} offset", t.offset_at)]
        marks += [("padding", self.infos_end), ("data", self.data_start)]
        marks += [(f"tensor {t.name} data", self.data_start + t.offset) for t in self.tensors]
        marks.append(("end", self.size))
        return marks


def _skip(data: bytes, pos: int, vtype: int, strings: list[int], keep: bool) -> int:
    if vtype in SCALAR_FORMATS:
        return pos + struct.calcsize(SCALAR_FORMATS[vtype])
    if vtype == STRING:
        if keep:
            strings.append(pos)
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
    assert vtype == ARRAY
    item_type, count = struct.unpack_from("<IQ", data, pos)
    pos += 12
    for i in range(count):  # a few elements of a string array are enough to aim at
        pos = _skip(data, pos, item_type, strings, keep and (i < 4 or i == count - 1))
    return pos


def layout(data: bytes) -> Layout:
    """Map a valid GGUF file's regions."""
    assert data[:4] == b"GGUF"
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    pos, kvs, strings = HEADER_BYTES, [], []
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        start = pos
        strings.append(pos)
        key_len = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8:pos + 8 + key_len].decode()
        type_at = pos + 8 + key_len
        vtype = struct.unpack_from("<I", data, type_at)[0]
        item_type = struct.unpack_from("<I", data, type_at + 4)[0] if vtype == ARRAY else None
        pos = _skip(data, type_at + 4, vtype, strings, True)
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", data, type_at + 4)[0]
        kvs.append(KV(key, start, type_at, pos, vtype, item_type))
    kv_end, tensors = pos, []
    for _ in range(n_tensors):
        start = pos
        strings.append(pos)
        name_len = struct.unpack_from("<Q", data, pos)[0]
        name = data[pos + 8:pos + 8 + name_len].decode()
        n_dims_at = pos + 8 + name_len
        n_dims = struct.unpack_from("<I", data, n_dims_at)[0]
        type_at = n_dims_at + 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", data, type_at)
        pos = type_at + 12
        tensors.append(TensorRecord(name, start, n_dims_at, n_dims, type_at, type_at + 4, pos,
                                    offset, ggml_type))
    return Layout(len(data), tuple(kvs), tuple(tensors), kv_end, pos,
                  pad(pos, alignment) if tensors else pos, alignment, tuple(strings))


@dataclass(frozen=True)
class Base:
    """A valid file to mutate: its bytes and its map."""

    name: str
    data: bytes
    layout: Layout

    @classmethod
    def of(cls, name: str, path: Path) -> Base:
        """Read and map ``path``."""
        data = path.read_bytes()
        return cls(name, data, layout(data))

    def rebuild(self, kvs: list[bytes], alignment: int | None = None) -> bytes:
        """The same tensors with other metadata records, the data section realigned."""
        lay = self.layout
        head = (self.data[:8] + struct.pack("<QQ", len(lay.tensors), len(kvs)) + b"".join(kvs)
                + self.data[lay.kv_end:lay.infos_end])
        step = alignment or lay.alignment
        return head + b"\0" * (pad(len(head), step) - len(head)) + self.data[lay.data_start:]

    def kv_bytes(self) -> list[bytes]:
        """The metadata records as they are."""
        return [self.data[kv.start:kv.end] for kv in self.layout.kvs]


def tiny_base(folder: Path) -> Base:
    """The tiny Llama of the engine tests, shrunk (80 kB) so thousands of copies are cheap."""
    path = write_tiny_llama(folder / "base-llama.gguf", n_layer=1, n_embd=32, n_ff=64,
                            n_head=4, n_head_kv=2, n_ctx=256)
    return Base.of("llama", path)


VARIED_KVS: tuple[tuple[str, int, object], ...] = (
    ("general.architecture", STRING, "gemma3"),
    ("general.name", STRING, "varied"),
    ("general.alignment", UINT32, 64),
    ("general.file_type", UINT32, 7),
    ("split.count", UINT16, 1),
    ("gemma3.block_count", UINT32, 4),
    ("gemma3.context_length", UINT64, 32768),
    ("gemma3.embedding_length", UINT32, 64),
    ("gemma3.feed_forward_length", ARRAY, (INT32, [128, 128, 128, 96])),
    ("gemma3.attention.head_count", UINT16, 4),
    ("gemma3.attention.head_count_kv", ARRAY, (UINT32, [2, 2, 1, 0])),
    ("gemma3.attention.key_length", UINT32, 32),
    ("gemma3.attention.sliding_window", UINT32, 512),
    ("gemma3.attention.sliding_window_pattern", ARRAY, (BOOL, [True, True, False, True])),
    ("gemma3.rope.freq_base", FLOAT32, 10000.0),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, [f"t{i}" for i in range(16)])),
    ("tokenizer.ggml.scores", ARRAY, (FLOAT32, [0.0] * 16)),
    ("tokenizer.ggml.eos_token_id", UINT32, 1),
)
# name, shape, ggml type (F32 0, Q8_0 8, Q4_K 12, BF16 30), bytes
VARIED_TENSORS: tuple[tuple[str, tuple[int, ...], int, int], ...] = (
    ("token_embd.weight", (64, 16), 8, 64 * 16 // 32 * 34),
    ("blk.0.attn_q.weight", (256, 2), 12, 2 * 144),
    ("blk.0.attn_norm.weight", (64,), 0, 64 * 4),
    ("blk.1.ffn_up.weight", (64, 2, 2), 30, 64 * 2 * 2 * 2),
    ("rope_scale", (), 0, 4),  # zero dimensions: a scalar, which llama.cpp accepts
)


def write_varied(path: Path) -> Path:
    """A hand-made GGUF using what the tiny Llama does not: alignment 64, a split count,
    per-layer arrays, a flag-array sliding-window pattern, 16- and 64-bit integers, quantized
    and 0-d tensors."""
    alignment = 64
    kvs = b"".join(encode_kv(*kv) for kv in VARIED_KVS)
    infos, offset = b"", 0
    for name, shape, ggml_type, n_bytes in VARIED_TENSORS:
        infos += encode_tensor_info(name, shape, ggml_type, offset)
        offset += pad(n_bytes, alignment)
    head = (b"GGUF" + struct.pack("<IQQ", 3, len(VARIED_TENSORS), len(VARIED_KVS)) + kvs
            + infos)
    data = bytes(random.Random(0).getrandbits(8) for _ in range(offset))
    path.write_bytes(head + b"\0" * (pad(len(head), alignment) - len(head)) + data)
    return path


def bases(folder: Path) -> list[Base]:
    """Every valid file the mutations start from."""
    return [tiny_base(folder), Base.of("varied", write_varied(folder / "base-varied.gguf"))]


# --- mutations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One malformed file: its mutation class, what was done, the bytes."""

    kind: str
    label: str
    data: bytes


def _set(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _u64(rng: random.Random, base: Base, original: int) -> int:
    """A length, count, dimension or offset that a parser should survive."""
    size = base.layout.size
    picks = [0, 1, 2, 3, 31, 32, 33, 255, 1 << 16, (1 << 31) - 1, 1 << 31, U32_MAX, 1 << 32,
             (1 << 53) + 1, 1 << 62, (1 << 63) - 1, 1 << 63, U64_MAX, size - 1, size, size + 1,
             original - 1, original + 1, original * 2, original << 32, rng.getrandbits(64)]
    return min(max(rng.choice(picks), 0), U64_MAX)


def _u32(rng: random.Random, original: int) -> int:
    picks = [0, 1, 2, 4, 5, 9, 12, 13, 31, 36, 42, 43, 64, 255, 1 << 16, (1 << 31) - 1,
             1 << 31, U32_MAX, original + 1, original - 1, rng.getrandbits(32)]
    return min(max(rng.choice(picks), 0), U32_MAX)


def truncate(rng: random.Random, base: Base) -> Case:
    """Cut the file at a region boundary (give or take a byte) or anywhere."""
    lay = base.layout
    if rng.random() < 0.7:
        name, at = rng.choice(lay.boundaries())
        cut = min(max(at + rng.choice((-1, 0, 1)), 0), lay.size - 1)
        return Case("truncate", f"cut at {name} ({cut})", base.data[:cut])
    cut = rng.randrange(lay.size)
    return Case("truncate", f"cut at byte {cut}", base.data[:cut])


def _flip(rng: random.Random, base: Base, kind: str, lo: int, hi: int) -> Case:
    out = bytearray(base.data)
    spots = []
    for _ in range(rng.choice((1, 1, 2, 4))):
        at = rng.randrange(lo, hi)
        out[at] ^= rng.choice((0x01, 0x80, 0xFF, rng.randrange(1, 256)))
        spots.append(at)
    return Case(kind, f"flipped bytes {spots}", bytes(out))


def flip_header(rng: random.Random, base: Base) -> Case:
    """Flip bits in the magic, version and counts."""
    return _flip(rng, base, "flip-header", 0, HEADER_BYTES)


def flip_kv(rng: random.Random, base: Base) -> Case:
    """Flip bits anywhere in the metadata section."""
    return _flip(rng, base, "flip-kv", HEADER_BYTES, base.layout.kv_end)


def flip_tensor_info(rng: random.Random, base: Base) -> Case:
    """Flip bits anywhere in the tensor table."""
    return _flip(rng, base, "flip-tensor-info", base.layout.kv_end, base.layout.infos_end)


def absurd_count(rng: random.Random, base: Base) -> Case:
    """Set the tensor count or the metadata count to an absurd number."""
    at, field = rng.choice(((8, "tensor count"), (16, "kv count")))
    original = struct.unpack_from("<Q", base.data, at)[0]
    value = _u64(rng, base, original)
    return Case("absurd-count", f"{field} = {value}", _set(base.data, at, "<Q", value))


def string_length(rng: random.Random, base: Base) -> Case:
    """Set the length of a key, string value, vocabulary entry or tensor name."""
    at = rng.choice(base.layout.string_lengths)
    value = _u64(rng, base, struct.unpack_from("<Q", base.data, at)[0])
    return Case("string-length", f"string at {at} length = {value}",
                _set(base.data, at, "<Q", value))


def array_count(rng: random.Random, base: Base) -> Case:
    """Set the element count of an array value."""
    arrays = [kv for kv in base.layout.kvs if kv.item_type is not None]
    kv = rng.choice(arrays)
    at = kv.type_at + 8
    value = _u64(rng, base, struct.unpack_from("<Q", base.data, at)[0])
    return Case("array-count", f"{kv.key} count = {value}", _set(base.data, at, "<Q", value))


def value_type(rng: random.Random, base: Base) -> Case:
    """Change a value's type field (or an array's element type) to another or an unknown one:
    the bytes that follow are then read as the wrong thing."""
    kv = rng.choice(base.layout.kvs)
    at = kv.type_at + 4 if kv.item_type is not None and rng.random() < 0.5 else kv.type_at
    value = rng.choice([*range(13), *[_u32(rng, 0)] * 4])
    return Case("value-type", f"{kv.key} type field at {at} = {value}",
                _set(base.data, at, "<I", value))


def tensor_shape(rng: random.Random, base: Base) -> Case:
    """Set a tensor's dimension count or one of its dimensions."""
    t = rng.choice(base.layout.tensors)
    if t.n_dims == 0 or rng.random() < 0.3:
        value = rng.choice((0, 1, 3, 4, 5, 8, 255, U32_MAX))
        return Case("tensor-shape", f"{t.name} n_dims = {value}",
                    _set(base.data, t.n_dims_at, "<I", value))
    i = rng.randrange(t.n_dims)
    at = t.n_dims_at + 4 + 8 * i
    value = _u64(rng, base, struct.unpack_from("<Q", base.data, at)[0])
    return Case("tensor-shape", f"{t.name} dim {i} = {value}", _set(base.data, at, "<Q", value))


def tensor_offset(rng: random.Random, base: Base) -> Case:
    """Move a tensor's data: misaligned, onto another tensor, past the end, or absurd."""
    lay = base.layout
    t = rng.choice(lay.tensors)
    others = [o.offset for o in lay.tensors if o is not t] or [0]
    value = rng.choice([t.offset + 1, t.offset + lay.alignment, t.offset - lay.alignment,
                        rng.choice(others), lay.size - lay.data_start, lay.size,
                        _u64(rng, base, t.offset)])
    value = min(max(value, 0), U64_MAX)
    return Case("tensor-offset", f"{t.name} offset = {value}",
                _set(base.data, t.offset_at, "<Q", value))


def ggml_type(rng: random.Random, base: Base) -> Case:
    """Give a tensor an unknown, removed, or other (differently sized) ggml type."""
    t = rng.choice(base.layout.tensors)
    value = rng.choice([0, 1, 2, 4, 5, 8, 10, 12, 14, 24, 28, 30, 31, 32, 33, 36, 37, 38, 39, 43,
                        100, 1 << 31, U32_MAX, _u32(rng, t.ggml_type)])
    return Case("ggml-type", f"{t.name} type = {value}", _set(base.data, t.type_at, "<I", value))


ALIGNMENT_VALUES: tuple[tuple[int, object], ...] = (
    (UINT32, 0), (UINT32, 1), (UINT32, 3), (UINT32, 16), (UINT32, 48), (UINT32, 64),
    (UINT32, 1 << 20), (UINT32, 1 << 31), (UINT32, U32_MAX), (UINT64, 32), (INT32, -32),
    (UINT8, 32), (FLOAT32, 32.0), (STRING, "32"), (BOOL, True), (ARRAY, (UINT32, [32])),
)


def alignment(rng: random.Random, base: Base) -> Case:
    """Set general.alignment (adding it where absent) to a wrong number or a wrong type; the
    data section is realigned to it where it is a usable power of two."""
    vtype, value = rng.choice(ALIGNMENT_VALUES)
    kvs = [kv for kv, meta in zip(base.kv_bytes(), base.layout.kvs, strict=True)
           if meta.key != "general.alignment"]
    kvs.insert(rng.randrange(len(kvs) + 1), encode_kv("general.alignment", vtype, value))
    step = None
    if vtype == UINT32 and isinstance(value, int) and 0 < value <= 1 << 20 and \
            value & (value - 1) == 0:
        step = value
    return Case("alignment", f"general.alignment = {value!r} (type {vtype})",
                base.rebuild(kvs, alignment=step))


def extra_kv(rng: random.Random, base: Base) -> Case:
    """Add a record with an empty key, a duplicate key, a key that is not UTF-8, or a long one."""
    kvs = base.kv_bytes()
    key: str | bytes = rng.choice(["", rng.choice(base.layout.kvs).key, b"\xff\xfe\x00key",
                                   "k" * 5000, "general.extra"])
    new = rng.choice(REPLACEMENTS)
    kvs.insert(rng.randrange(len(kvs) + 1), encode_kv(key, new.vtype, new.value))
    return Case("extra-kv", f"added key {key!r:.40} = {new.label}", base.rebuild(kvs))


@dataclass(frozen=True)
class Replacement:
    """A metadata value of some type; ``kind`` says what it is to a reader."""

    label: str
    vtype: int
    value: object
    kind: str  # int, float, bool, str, int-array, str-array, other-array, invalid


def _r(label: str, vtype: int, value: object, kind: str) -> Replacement:
    return Replacement(label, vtype, value, kind)


REPLACEMENTS: tuple[Replacement, ...] = (
    _r("empty string", STRING, "", "str"),
    _r("string 'abc'", STRING, "abc", "str"),
    _r("string '12'", STRING, "12", "str"),
    _r("string, not UTF-8", STRING, b"\xff\xfe\x80", "str"),
    _r("string, 20k chars", STRING, "x" * 20_000, "str"),
    _r("uint8 0", UINT8, 0, "int"),
    _r("uint8 255", UINT8, 255, "int"),
    _r("int8 -1", INT8, -1, "int"),
    _r("int16 -32768", INT16, -32768, "int"),
    _r("uint16 65535", UINT16, 65535, "int"),
    _r("uint32 1", UINT32, 1, "int"),
    _r("uint32 max", UINT32, U32_MAX, "int"),
    _r("int32 -2^31", INT32, -(1 << 31), "int"),
    _r("uint64 2^63", UINT64, 1 << 63, "int"),
    _r("uint64 max", UINT64, U64_MAX, "int"),
    _r("int64 -1", INT64, -1, "int"),
    _r("int64 -2^63", INT64, -(1 << 63), "int"),
    _r("float32 NaN", FLOAT32, math.nan, "float"),
    _r("float32 inf", FLOAT32, math.inf, "float"),
    _r("float32 -inf", FLOAT32, -math.inf, "float"),
    _r("float32 2.0", FLOAT32, 2.0, "float"),
    _r("float64 NaN", FLOAT64, math.nan, "float"),
    _r("float64 -1e308", FLOAT64, -1e308, "float"),
    _r("bool true", BOOL, True, "bool"),
    _r("bool false", BOOL, False, "bool"),
    _r("array uint32 [1, 2, 3]", ARRAY, (UINT32, [1, 2, 3]), "int-array"),
    _r("array int32 [-1, 5]", ARRAY, (INT32, [-1, 5]), "int-array"),
    _r("array uint64 [2^63]", ARRAY, (UINT64, [1 << 63]), "int-array"),
    _r("empty array", ARRAY, (UINT32, []), "int-array"),
    _r("array uint8 x5000", ARRAY, (UINT8, [1] * 5000), "int-array"),
    _r("array float32 [NaN, inf]", ARRAY, (FLOAT32, [math.nan, math.inf]), "other-array"),
    _r("array bool", ARRAY, (BOOL, [True, False]), "other-array"),
    _r("array string", ARRAY, (STRING, ["a", "b"]), "str-array"),
    _r("nested array", ARRAY, (ARRAY, [(UINT32, [1, 2]), (UINT32, [3])]), "invalid"),
    _r("array of unknown type 13", ARRAY, (13, []), "invalid"),
)


def replace_with(base: Base, index: int, new: Replacement) -> Case:
    """Metadata record ``index`` with its value replaced by ``new``."""
    kvs = base.kv_bytes()
    key = base.layout.kvs[index].key
    kvs[index] = encode_kv(key, new.vtype, new.value)
    return Case("replace-value", f"{key} = {new.label}", base.rebuild(kvs))


def replace_value(rng: random.Random, base: Base) -> Case:
    """A random metadata value replaced by a value of another type."""
    return replace_with(base, rng.randrange(len(base.layout.kvs)), rng.choice(REPLACEMENTS))


MUTATIONS: dict[str, Callable[[random.Random, Base], Case]] = {
    "truncate": truncate,
    "flip-header": flip_header,
    "flip-kv": flip_kv,
    "flip-tensor-info": flip_tensor_info,
    "absurd-count": absurd_count,
    "string-length": string_length,
    "array-count": array_count,
    "value-type": value_type,
    "tensor-shape": tensor_shape,
    "tensor-offset": tensor_offset,
    "ggml-type": ggml_type,
    "alignment": alignment,
    "extra-kv": extra_kv,
    "replace-value": replace_value,
}


def truncations(base: Base) -> Iterator[Case]:
    """The file cut at every region boundary, a byte before it and a byte after it."""
    seen: set[int] = set()
    for name, at in base.layout.boundaries():
        for cut in (at - 1, at, at + 1):
            if 0 <= cut < base.layout.size and cut not in seen:
                seen.add(cut)
                yield Case("truncate", f"cut at {name} {cut - at:+d} ({cut})", base.data[:cut])


def replacements(base: Base) -> Iterator[Case]:
    """Every metadata value replaced by every value in ``REPLACEMENTS``."""
    for index in range(len(base.layout.kvs)):
        for new in REPLACEMENTS:
            yield replace_with(base, index, new)
