"""Read what a GGUF model is, without loading its weights: ``ModelInfo``.

``read_model_info`` memory-maps a file (every part of a split model) and reads only its header,
metadata and tensor table; ``parse_header`` and ``model_info_from_headers`` do the same from
the first bytes of files that are not here (headers fetched over HTTP Range requests, with the
files' total sizes). Both go through one parser, ``app.core.gguf_reader``, which holds the
binary layout and its checks.

The file is untrusted. Every count and length is checked against the bytes that remain before
anything is read or allocated from it, so a corrupt header costs neither time nor memory; every
metadata value a ``ModelInfo`` field comes from is checked for its type and a sensible range
where it is read; the layout rules are llama.cpp's own (``gguf.cpp``: key and tensor names,
dimensions, ggml types, alignment, where each tensor's data lies). Whatever is wrong, the caller
gets ``GGUFError`` with a message that names the file and the fault, never another exception
(from a partial header, also ``HeaderIncomplete``: fetch more and parse again).
"""

from __future__ import annotations

import math
import mmap
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core import quant_types
from app.core.gguf_reader import (
    BOOL,
    GGUF_MAGIC,
    INTEGER_TYPES,
    STRING,
    Array,
    Buffer,
    Damaged,
    GGUFError,
    Header,
    HeaderIncomplete,
    TensorInfo,
    Truncated,
    Value,
    describe,
    parse,
    show,
)

__all__ = ["GGUF_MAGIC", "GGUFError", "Header", "HeaderIncomplete", "ModelInfo", "TensorInfo",
           "TensorTypeTotal", "model_info_from_headers", "parse_header", "read_model_info",
           "split_parts"]

_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# Sensible ranges for the metadata a ModelInfo is made of. They reject corrupt values while
# leaving every real model far inside: consumers loop over layers and multiply the widths.
_U32_MAX = (1 << 32) - 1  # llama.cpp reads contexts, token ids and file types as uint32
_MAX_LAYERS = 4096  # llama.cpp's own limit is 512 (LLAMA_MAX_LAYERS)
_MAX_WIDTH = 1 << 22  # embedding, feed-forward, heads, head dims, experts: real ones are < 2^18
_MAX_SPLIT = 99_999  # split part names carry five digits


@dataclass(frozen=True)
class TensorTypeTotal:
    """How many tensors of one ggml type a model has, and their bytes."""

    type_name: str
    count: int
    n_bytes: int
    n_elements: int


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
    # llama.cpp's pooling type ({arch}.pooling_type: 1 mean, 2 CLS, 3 last token); 0 when the
    # GGUF declares none, as for every text-generation model: only embedding models set it
    pooling_type: int = 0

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


def _parse(path: Path) -> Header:
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
                return parse(data, len(data), path)
            except HeaderIncomplete:  # the map holds the whole file: cannot happen
                raise GGUFError(f"{path.name} changed while it was read; try again.") from None
            except Truncated as exc:
                raise GGUFError(
                    f"{path.name} is truncated or damaged: {exc} ({len(data):,} bytes). It was "
                    "probably cut off while downloading or copying; get it again.") from None
            except Damaged as exc:
                raise GGUFError(f"{path.name} is damaged: {exc}. Download or convert it again.") \
                    from None


def parse_header(data: Buffer, size: int, path: Path) -> Header:
    """Read one GGUF file's header from its first ``len(data)`` bytes, the file being ``size``
    bytes long (a header fetched over HTTP: the tensor data is not there).

    The same checks as for a file on disk; raises GGUFError when the header is broken, and
    HeaderIncomplete (with how many bytes are needed at least) when ``data`` ends before the
    header does. ``path`` names the file in messages and in the result.
    """
    if size < 4:
        raise GGUFError(f"{path.name} is not a GGUF model file (it is only {size} bytes).")
    try:
        return parse(data, size, path)
    except Truncated as exc:
        raise GGUFError(f"{path.name} is truncated or damaged: {exc} ({size:,} bytes). The "
                        "published file cannot be loaded as it is.") from None
    except Damaged as exc:
        raise GGUFError(f"{path.name} is damaged: {exc}. The published file cannot be loaded "
                        "as it is.") from None


def split_parts(path: Path) -> tuple[Path, ...]:
    """All parts of a split GGUF (``x-00001-of-00003.gguf``) in order, or just ``path``."""
    match = _SPLIT_RE.match(path.name)
    if not match:
        return (path,)
    count = int(match["count"])
    return tuple(
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    )


class _Metadata:
    """One file's metadata, read with type and range checks: a wrong value is a GGUFError."""

    def __init__(self, values: dict[str, Value], file_name: str) -> None:
        self.values = values
        self.file_name = file_name

    def error(self, key: str, problem: str) -> GGUFError:
        return GGUFError(f"{self.file_name} is damaged: its metadata {show(key)} {problem}. "
                         "Download or convert it again.")

    def integer(self, key: str, lo: int, hi: int, *, per_layer: bool = False) -> int | None:
        """The integer at ``key`` in ``lo..hi``, None when absent. A ``per_layer`` key may hold
        one value per layer instead (each in ``0..hi``): the largest is returned."""
        value = self.values.get(key)
        if value is None:
            return None
        if per_layer and isinstance(value, Array) and value.item_type in INTEGER_TYPES:
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
            raise self.error(key, f"is {describe(value)}, where an integer belongs")
        if not lo <= value <= hi:
            raise self.error(key, f"is {value:,}, outside the sensible range {lo:,} to {hi:,}")
        return value

    def text(self, key: str) -> str | None:
        """The string at ``key``, None when absent."""
        value = self.values.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.error(key, f"is {describe(value)}, where a string belongs")

    def vocab_size(self, arch: str) -> int:
        """The number of tokens: the vocabulary's length, else ``{arch}.vocab_size``, else 0."""
        tokens = self.values.get("tokenizer.ggml.tokens")
        if tokens is None:
            return self.integer(f"{arch}.vocab_size", 1, _U32_MAX) or 0
        if not isinstance(tokens, Array) or tokens.item_type != STRING:
            raise self.error("tokenizer.ggml.tokens",
                             f"is {describe(tokens)}, where the array of token strings belongs")
        return tokens.count

    def sliding_pattern(self, arch: str) -> int | None:
        """The period of the sliding-window layer pattern: stored as a number, or as one flag per
        layer (true: sliding window) from which the period is read."""
        key = f"{arch}.attention.sliding_window_pattern"
        value = self.values.get(key)
        if not isinstance(value, Array):
            return self.integer(key, 0, _MAX_LAYERS)
        if value.item_type != BOOL and value.item_type not in INTEGER_TYPES:
            raise self.error(key, f"is {describe(value)}, where per-layer flags belong")
        if value.items is None:
            raise self.error(key, f"holds {value.count:,} per-layer flags, more than the "
                                  f"{_MAX_LAYERS:,} layers a model can have")
        non_swa = [i for i, swa in enumerate(value.items) if not swa]
        return non_swa[0] + 1 if non_swa else None


def _parts_of(header: Header) -> tuple[Path, ...]:
    """The parts of the model whose (any) part ``header`` is, by its 'split.count'."""
    path = header.path
    split_count = _Metadata(header.metadata, path.name).integer("split.count", 0, _MAX_SPLIT) or 1
    # llama.cpp goes by split.count, not by the name: a lone file named like a part is one file
    parts = split_parts(path) if split_count > 1 else (path,)
    if len(parts) != split_count:
        raise GGUFError(f"{path.name} is part of a {split_count}-part model (its 'split.count') "
                        "but its name does not follow the '-0000N-of-0000M.gguf' pattern; keep "
                        "the original file names.")
    return parts


def read_model_info(path: Path | str) -> ModelInfo:
    """Inspect a GGUF file (the first part, for a split model); raise GGUFError when broken."""
    path = Path(path)
    first = _parse(path)
    parts = _parts_of(first)
    parsed = []
    for part in parts:
        if part == path:
            parsed.append(first)
        elif not part.exists():
            raise GGUFError(f"{path.name} is part of a {len(parts)}-part model; {part.name} is "
                            "missing. Download all parts into the same folder.")
        else:
            parsed.append(_parse(part))
    return _model_info(path, parts, parsed)


def model_info_from_headers(headers: Sequence[Header]) -> ModelInfo:
    """A ModelInfo from the parsed headers (``parse_header``) of every part of a model, in part
    order: what ``read_model_info`` gives for the files on disk, without the files."""
    if not headers:
        raise GGUFError("No GGUF header was given.")
    first = headers[0]
    parts = _parts_of(first)
    given = tuple(h.path for h in headers)
    if given != parts:
        raise GGUFError(f"{first.path.name} is part of a {len(parts)}-part model "
                        f"({', '.join(p.name for p in parts)}), but the headers of "
                        f"{', '.join(p.name for p in given)} were read.")
    return _model_info(first.path, parts, list(headers))


def _model_info(path: Path, parts: tuple[Path, ...], parsed: list[Header]) -> ModelInfo:
    split_count = len(parts)
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
        pooling_type=meta.integer(f"{arch}.pooling_type", 0, 16) or 0,
    )
