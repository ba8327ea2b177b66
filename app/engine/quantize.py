"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``), in a child process.

The work is llama.cpp's C++; this module adds what a person needs around it: checks before
starting (a readable source, requantizing only when allowed, an importance matrix where the type
requires one, disk space), progress per tensor read from llama.cpp's log, cancel (the child is
killed), a size estimate (llama.cpp's dry run), and atomic output: the file is written under a
temporary name beside the target and renamed only when llama.cpp succeeded and the result reads
back as a GGUF. Mixed precision: output and token-embedding types, per-tensor overrides by
pattern (``attn_v=Q6_K``), pure mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core import quant_types
from app.core.gguf_info import GGUFError, read_model_info
from app.engine.child import child_errors, no_room, stream_from_child
from app.engine.events import Progress

_PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_QUANT_SIZE = re.compile(r"quant size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")
_FALLBACK = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")
# A dry run's line per tensor ends with the type it would get: "... -> 0.11 MiB (q8_0)", or,
# for a tensor left as it is, "type =    f32, size =    0.002 MiB".
_DRY_NEW_TYPE = re.compile(r"->\s*[\d.]+ MiB \((\w+)\)\s*$")
_DRY_KEPT_TYPE = re.compile(r"type =\s*(\w+), size =\s*[\d.]+ MiB\s*$")
UNQUANTIZED = {"F32", "F16", "BF16"}
DISK_MARGIN = 64 * 1024 * 1024


class QuantizeError(Exception):
    """Quantization could not run or failed; the message says why and what to do."""


class QuantizeCancelled(QuantizeError):
    """The user cancelled; nothing was left behind."""


@dataclass(frozen=True)
class QuantizeOptions:
    """What to produce. Tensor types are ggml type names ('Q6_K', 'Q8_0', 'F16')."""

    quant: str
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()  # (regex on tensor names, ggml type)
    pure: bool = False
    allow_requantize: bool = False
    threads: int | None = None
    imatrix: str | None = None  # path of a GGUF importance matrix (app.engine.imatrix)


@dataclass(frozen=True)
class Warning_:
    """Something the user should know but that does not stop the job."""

    message: str


@dataclass(frozen=True)
class Quantized:
    """A finished output."""

    path: Path
    quant: str
    size: int
    seconds: float


@dataclass(frozen=True)
class TensorType:
    """In a dry run: the ggml type llama.cpp would give one tensor ('Q5_0', 'F32')."""

    name: str
    type_name: str


@dataclass(frozen=True)
class SizeEstimate:
    """llama.cpp's dry-run answer: the output's size, average bits per weight, and the type
    each tensor would get (fallbacks included), so that the output can be described exactly
    before it exists (``app.core.gguf_info.with_tensor_types``)."""

    quant: str
    bytes: int
    bits_per_weight: float
    tensor_types: tuple[tuple[str, str], ...] = ()


@dataclass
class _Native:
    """ctypes objects that must stay alive while llama.cpp reads the parameters."""

    keep: list[Any] = field(default_factory=list)


def _ggml_type(name: str) -> int:
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise QuantizeError(f"unknown tensor type {name!r}") from None


def _params(options: QuantizeOptions, dry_run: bool, native: _Native) -> Any:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = quant_types.by_name(options.quant).ftype
    p.nthread = options.threads or 0
    p.allow_requantize = options.allow_requantize
    p.pure = options.pure
    p.dry_run = dry_run
    if options.output_tensor_type:
        p.output_tensor_type = _ggml_type(options.output_tensor_type)
    if options.token_embedding_type:
        p.token_embedding_type = _ggml_type(options.token_embedding_type)
    if options.imatrix:
        from app.engine.imatrix import NativeImatrix, load

        native_imatrix = NativeImatrix(load(Path(options.imatrix)))
        native.keep.append(native_imatrix)
        p.imatrix = native_imatrix.pointer
    if options.overrides:
        entries = (llama_cpp.llama_model_tensor_override * (len(options.overrides) + 1))()
        for i, (pattern, type_name) in enumerate(options.overrides):
            encoded = pattern.encode()
            native.keep.append(encoded)
            entries[i].pattern = encoded
            entries[i].type = _ggml_type(type_name)
        entries[len(options.overrides)].pattern = None
        native.keep.append(entries)
        p.tt_overrides = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    return p


def _run_quantizer(send: Callable[[Any], None], src: str, dst: str, options: QuantizeOptions,
                   dry_run: bool) -> tuple[int, list[str]]:
    """In the child: run llama.cpp's quantizer, sending progress lines; returns (status, tail)."""
    import logging

    import llama_cpp

    from app.engine import llama_log

    # What matters is sent to the parent; the rest (a warning per fallback tensor) stays here.
    quiet = logging.getLogger("llama.cpp")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    llama_log.install()
    tail: list[str] = []

    def on_line(_level: int, line: str) -> None:
        tail.append(line)
        del tail[:-30]
        if _PROGRESS.match(line) or _QUANT_SIZE.search(line) or _FALLBACK.search(line):
            send(line)

    llama_log.add_listener(on_line)
    try:
        native = _Native()
        params = _params(options, dry_run, native)
        status = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    finally:
        llama_log.remove_listener(on_line)
    if status != 0 and not dry_run:
        # llama.cpp reports a failed write as "basic_ios::clear: iostream error": ask the system
        # here, in the process that wrote, whether the disk (or a size limit) was the cause
        room = no_room(Path(dst))
        if room is not None:
            raise room
    return int(status), tail


def _dry_runs(src: str, dst: str, options: list[QuantizeOptions]) -> list[list[str]]:
    """In the child: llama.cpp's dry run for each of ``options``; the lines each one sent."""
    answers = []
    for one in options:
        lines: list[str] = []
        status, tail = _run_quantizer(lines.append, src, dst, one, True)
        if status != 0:
            raise QuantizeError(f"llama.cpp's dry run for {one.quant} failed: "
                                + (tail[-1] if tail else f"status {status}"))
        answers.append(lines)
    return answers


def _check_source(src: Path, options: QuantizeOptions, dry_run: bool = False
                  ) -> tuple[int, list[str]]:
    """Raise QuantizeError for sources that cannot work; return (n_params, warnings). A dry
    run needs no importance matrix (llama.cpp sizes the output without one)."""
    try:
        info = read_model_info(src)
    except GGUFError as exc:
        raise QuantizeError(f"The source cannot be quantized: {exc}") from None
    try:
        target = quant_types.by_name(options.quant)
    except KeyError as exc:
        raise QuantizeError(str(exc.args[0])) from None
    warnings = []
    if info.file_type not in UNQUANTIZED:
        if not options.allow_requantize:
            raise QuantizeError(
                f"{src.name} is already quantized ({info.file_type}). Quantizing it again "
                "compounds the errors of both steps; start from an F16/BF16/F32 file, or allow "
                "requantizing explicitly.")
        warnings.append(f"Requantizing {info.file_type} to {target.name}: the errors of both "
                        "quantizations add up; the result is worse than quantizing from F16.")
    if options.imatrix:
        from app.engine.imatrix import ImatrixError, load

        try:
            imatrix = load(Path(options.imatrix))
        except (ImatrixError, OSError) as exc:
            raise QuantizeError(f"The importance matrix cannot be used: {exc}") from None
        columns = {t.name: t.shape[0] for t in info.tensors}  # ggml order: ne0 = input width
        if any(columns.get(name) != len(values) for name, values in imatrix.sums.items()):
            raise QuantizeError("The importance matrix was computed for a different model (its "
                                "tensor names or sizes do not match this file's).")
    elif target.needs_imatrix and not dry_run:
        raise QuantizeError(f"{target.name} needs an importance matrix: without one its quality "
                            "collapses. Compute one from a calibration text first.")
    return info.n_params, warnings


def _check_disk(out: Path, n_params: int, quant: str) -> None:
    need = quant_types.by_name(quant).estimated_bytes(n_params) + DISK_MARGIN
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise QuantizeError(f"Not enough disk space for {out.name}: about {need / 2**30:.2f} GiB "
                            f"needed, {free / 2**30:.2f} GiB free in {out.parent}.")


def _drive(src: Path, dst: Path, options: QuantizeOptions, dry_run: bool,
           cancel: Callable[[], bool] | None, out: Path
           ) -> Generator[Progress | SizeEstimate | Warning_ | TensorType, None,
                          tuple[int, list[str]]]:
    """Run the quantizer child writing ``dst`` (the temporary file of ``out``), turning its log
    lines into events; return (status, tail)."""
    stream = stream_from_child(_run_quantizer, str(src), str(dst), options, dry_run,
                               cancel=cancel)
    with child_errors(QuantizeError, QuantizeCancelled,
                      cancelled_message="Quantization cancelled; nothing was written.",
                      crashed="llama.cpp's quantizer stopped unexpectedly",
                      failed_prefix="Quantization failed: ", target=out):
        while True:
            try:
                line = next(stream)
            except StopIteration as stop:
                result: tuple[int, list[str]] = stop.value
                return result
            yield from _events(line, options.quant)


def _events(line: str, quant: str) -> Iterator[Progress | SizeEstimate | Warning_ | TensorType]:
    match = _PROGRESS.match(line)
    if match:
        yield Progress(int(match[1]), int(match[2]), match[3])
        new_type = _DRY_NEW_TYPE.search(line) or _DRY_KEPT_TYPE.search(line)
        if new_type:
            yield TensorType(match[3], new_type[1].upper())
        return
    yield _line_event(line, quant)


def _line_event(line: str, quant: str) -> SizeEstimate | Warning_:
    fallback = _FALLBACK.search(line)
    if fallback:
        return Warning_(f"{fallback[1]} of {fallback[2]} tensors could not use {quant}'s block "
                        "type (their rows are not a multiple of 256 values) and were stored in "
                        "a compatible type instead; the file is larger than usual for "
                        f"{quant}.")
    size = _QUANT_SIZE.search(line)
    assert size is not None  # the child sends only these three kinds of line
    return SizeEstimate(quant, int(float(size[1]) * 2**20), float(size[2]))


def estimate_size(src: Path, options: QuantizeOptions) -> SizeEstimate:
    """llama.cpp's dry run: the size the output will have (nothing is written)."""
    return estimate_sizes(src, [options])[0]


def estimate_sizes(src: Path, options: Sequence[QuantizeOptions]) -> list[SizeEstimate]:
    """llama.cpp's dry run for several targets, in one child process: each output's size and
    the type each of its tensors would get (nothing is written)."""
    from app.engine.child import call_in_child

    src = Path(src)
    for one in options:
        _check_source(src, one, dry_run=True)
    with child_errors(QuantizeError, QuantizeCancelled, cancelled_message="Cancelled.",
                      crashed="llama.cpp's quantizer stopped unexpectedly",
                      strip=("QuantizeError: ",)):
        answers = call_in_child(_dry_runs, str(src), str(src.with_name(".dry-run.gguf")),
                                list(options), timeout=600)
    estimates = []
    for one, lines in zip(options, answers, strict=True):
        size: SizeEstimate | None = None
        types: list[tuple[str, str]] = []
        for line in lines:
            for event in _events(line, one.quant):
                if isinstance(event, SizeEstimate):
                    size = event
                elif isinstance(event, TensorType):
                    types.append((event.name, event.type_name))
        if size is None:
            raise QuantizeError(f"llama.cpp's dry run for {one.quant} did not report a size.")
        estimates.append(SizeEstimate(size.quant, size.bytes, size.bits_per_weight,
                                      tuple(types)))
    return estimates


def quantize(src: Path, out: Path, options: QuantizeOptions,
             cancel: Callable[[], bool] | None = None
             ) -> Iterator[Progress | SizeEstimate | Warning_ | TensorType | Quantized]:
    """Quantize ``src`` to ``out``; yields Warning_s, Progress per tensor, the final size,
    then Quantized."""
    src, out = Path(src), Path(out)
    n_params, warnings = _check_source(src, options)
    for message in warnings:
        yield Warning_(message)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_disk(out, n_params, options.quant)
    tmp = out.with_name(f".{out.name}.part")
    start = time.perf_counter()
    try:
        status, tail = yield from _drive(src, tmp, options, False, cancel, out)
        if status != 0:
            errors = [ln for ln in tail if "error" in ln.lower() or "failed" in ln.lower()]
            raise QuantizeError("llama.cpp could not quantize the model: "
                                + (errors[-1] if errors else f"status {status}"))
        try:
            read_model_info(tmp)
        except GGUFError as exc:
            raise QuantizeError(f"The quantized file does not read back: {exc}") from None
        tmp.replace(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    yield Quantized(out, options.quant, out.stat().st_size, time.perf_counter() - start)


def quantize_many(src: Path, targets: Sequence[tuple[QuantizeOptions, Path]],
                  cancel: Callable[[], bool] | None = None
                  ) -> Iterator[Progress | SizeEstimate | Warning_ | TensorType | Quantized]:
    """Several types from one source in one job; stops at the first failure."""
    for options, out in targets:
        yield from quantize(src, out, options, cancel)
