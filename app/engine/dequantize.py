"""Write an F16 (or F32) GGUF from any GGUF, dequantizing with the gguf package.

Useful to get a higher-precision reference or a quantization source from a model that only
exists quantized (the embedded SmolLM2 is Q4_1). Dequantizing does not bring back what
quantization lost: the result is exactly the quantized model, in a wider type. One-dimensional
tensors (norms, biases) stay F32, as llama.cpp's converter writes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.gguf_info import GGUFError, read_model_info
from app.engine.events import Progress


class DequantizeError(Exception):
    """The source could not be read or the output not written."""


class DequantizeCancelled(DequantizeError):
    """The user cancelled; nothing was left behind."""


@dataclass(frozen=True)
class Dequantized:
    path: Path
    size: int


_FILE_TYPES = {"F16": 1, "F32": 0}


def _write(send: Callable[[Progress], None], src: str, tmp: str, target: str) -> None:
    """In the child: read every tensor of ``src``, widen it, write ``tmp``."""
    from app.engine.child import no_room

    try:
        _widen(send, src, tmp, target)
    except OSError as exc:
        # numpy's tofile reports a failed write without its errno: find out here, in the
        # process that wrote, whether the disk (or a size limit) was the cause
        raise no_room(Path(tmp), exc) or exc from None


def _widen(send: Callable[[Progress], None], src: str, tmp: str, target: str) -> None:
    import gguf

    reader = gguf.GGUFReader(src)
    arch = str(reader.get_field("general.architecture").contents())  # type: ignore[union-attr]
    writer = gguf.GGUFWriter(tmp, arch)
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type",
                                                "general.alignment"):
            continue
        vtype = fld.types[0]
        sub = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, fld.contents(), vtype, sub)
    writer.add_file_type(_FILE_TYPES[target])
    wide = np.float16 if target == "F16" else np.float32
    total = len(reader.tensors)
    for i, tensor in enumerate(reader.tensors):
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        data = data.astype(np.float32 if data.ndim == 1 or len(tensor.shape) == 1 else wide)
        writer.add_tensor(tensor.name, data)
        send(Progress(i + 1, total, tensor.name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def dequantize(src: Path, out: Path, target: str = "F16",
               cancel: Callable[[], bool] | None = None) -> Iterator[Progress | Dequantized]:
    """Write ``out`` with every tensor of ``src`` in ``target`` ('F16' or 'F32').

    The work runs in a child process (it is seconds of CPU-bound numpy per GB); cancel kills
    it. The file is written under a temporary name beside ``out`` and renamed when it reads
    back as a GGUF.
    """
    from app.engine.child import child_errors, stream_from_child

    src, out = Path(src), Path(out)
    try:
        read_model_info(src)  # clear errors for broken files before the slow reader
    except GGUFError as exc:
        raise DequantizeError(str(exc)) from None
    if target not in _FILE_TYPES:
        raise DequantizeError(f"target must be F16 or F32, not {target}")
    tmp = out.with_name(f".{out.name}.part")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with child_errors(DequantizeError, DequantizeCancelled,
                          cancelled_message="Cancelled; nothing was written.",
                          crashed="Dequantizing stopped unexpectedly",
                          failed_prefix="Dequantizing failed: ", target=out):
            yield from stream_from_child(_write, str(src), str(tmp), target, cancel=cancel)
        try:
            read_model_info(tmp)
        except GGUFError as exc:
            raise DequantizeError(f"The F16 copy does not read back: {exc}") from None
        tmp.replace(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    yield Dequantized(out, out.stat().st_size)
