"""A disk that fills up (or a file-size limit that is reached) in the middle of a job.

Every job that writes a model (quantize, convert, dequantize) or an importance matrix must end
with its own error saying the disk is the problem and what to do (not llama.cpp's "iostream
error" or numpy's "4096 requested and 0 written"), leave neither the output nor its temporary
'.part' file behind, and work again once there is room.

Two ways to run out of room (tests/helpers/disk_limits.py): a file-size limit on the engine's
children (EFBIG, as on a FAT32 drive; runs anywhere on POSIX), and a small tmpfs that is really
full (ENOSPC; needs root to mount, skipped elsewhere).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core import paths, resources
from app.core.gguf_info import read_model_info
from app.engine.child import ChildFailed, call_in_child, child_errors, describe_exit
from app.engine.convert import Converted, ConvertError, convert
from app.engine.dequantize import Dequantized, DequantizeError, dequantize
from app.engine.evaluate import EvalError, Evaluation, evaluate
from app.engine.events import Progress
from app.engine.imatrix import Imatrix, ImatrixError, load, save
from app.engine.quantize import Quantized, QuantizeError, QuantizeOptions, quantize
from tests.helpers.disk_limits import (
    child_file_size_limit,
    fill,
    small_disk,
    write_past_own_limit,
)
from tests.helpers.hf_checkpoint import write_hf_llama

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE and tmpfs are POSIX")

KiB = 1024
MiB = 1024 * KiB
# What a person must never be shown instead of the reason: the native writers' own words
RAW = ("iostream error", "requested and", "Traceback", "[Errno", "OSError")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama-hf")


@pytest.fixture
def precheck_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """quantize refuses to start without room for the whole output plus a margin: report a
    roomy disk to that check, so that the disk fills up during the job, as when another program
    takes the space after the check."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2**40))


def _until_failure(job: Iterator[Any], error: type[Exception]) -> tuple[list[Any], str]:
    """Run ``job`` to its error; the events it yielded first and the error's message."""
    events: list[Any] = []
    with pytest.raises(error) as raised:
        for event in job:
            events.append(event)
    return events, str(raised.value)


def _assert_clear(message: str, *words: str) -> None:
    for word in words:
        assert word in message, message
    for raw in RAW:
        assert raw not in message, message


JOBS: dict[str, Callable[[Path, Path], Iterator[Any]]] = {
    "quantize": lambda src, out: quantize(src, out, QuantizeOptions("Q8_0")),
    "dequantize": lambda src, out: dequantize(src, out, "F32"),
}
ERRORS = {"quantize": QuantizeError, "dequantize": DequantizeError}
DONE = {"quantize": Quantized, "dequantize": Dequantized}


@pytest.mark.parametrize("job", ["quantize", "dequantize"])
def test_past_a_file_size_limit_mid_job(job: str, tiny_model_f16: Path, tmp_path: Path) -> None:
    """The output (1.4 MiB as Q8_0, 5 MiB as F32) outgrows a 512 KiB limit part-way."""
    out_dir = tmp_path / "out"
    out = out_dir / f"tiny-{job}.gguf"
    with child_file_size_limit(512 * KiB, tmp_path):
        events, message = _until_failure(JOBS[job](tiny_model_f16, out), ERRORS[job])
    assert any(isinstance(e, Progress) for e in events)  # it failed mid-job, not up front
    _assert_clear(message, f"{out.name} grew larger than the largest file allowed",
                  "File too large", "Choose a folder on another drive")
    assert list(out_dir.iterdir()) == []  # no output, no .part

    done = list(JOBS[job](tiny_model_f16, out))[-1]
    assert isinstance(done, DONE[job])
    assert read_model_info(out).n_params == read_model_info(tiny_model_f16).n_params
    assert [p.name for p in out_dir.iterdir()] == [out.name]


@pytest.mark.parametrize("job", ["quantize", "dequantize"])
def test_on_a_disk_that_is_full_mid_job(job: str, tiny_model_f16: Path, tmp_path: Path,
                                        precheck_passes: None) -> None:
    with small_disk(tmp_path / "disk", 8 * MiB) as disk:
        filler = fill(disk, leave=256 * KiB)
        out = disk / f"tiny-{job}.gguf"
        events, message = _until_failure(JOBS[job](tiny_model_f16, out), ERRORS[job])
        assert any(isinstance(e, Progress) for e in events)
        _assert_clear(message, f"not enough disk space for {out.name} in {disk}",
                      "the disk is full", "Free some space there")
        assert list(disk.iterdir()) == [filler]  # no output, no .part

        filler.unlink()  # space is freed
        done = list(JOBS[job](tiny_model_f16, out))[-1]
        assert isinstance(done, DONE[job])
        assert read_model_info(out).n_params == read_model_info(tiny_model_f16).n_params
        assert [p.name for p in disk.iterdir()] == [out.name]


def test_convert_past_a_file_size_limit(checkpoint: Path, tmp_path: Path) -> None:
    """The F32 conversion (500 KiB) outgrows a 256 KiB limit while writing tensors."""
    out_dir = tmp_path / "out"
    out = out_dir / "tiny-hf-F32.gguf"
    with child_file_size_limit(256 * KiB, tmp_path):
        events, message = _until_failure(convert(checkpoint, out, "F32"), ConvertError)
    assert any(isinstance(e, Progress) and e.message == "Writing tensors" for e in events)
    assert message.startswith("Conversion failed: ")
    _assert_clear(message, f"{out.name} grew larger than the largest file allowed",
                  "File too large")
    assert list(out_dir.iterdir()) == []

    done = list(convert(checkpoint, out, "F32"))[-1]
    assert isinstance(done, Converted) and read_model_info(out).file_type == "F32"
    assert [p.name for p in out_dir.iterdir()] == [out.name]


@pytest.mark.parametrize("limit", ["size limit", "full disk"])
def test_evaluation_without_room_for_the_reference_says_so_and_keeps_nothing(
        limit: str, tiny_model: Path, tiny_model_f16: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's cached distributions (40 chunks × 63 tokens × 1.5 KB: 4 MiB) are written
    through memory maps, where a full disk used to kill the child with SIGBUS part-way."""
    def run() -> list[Any]:
        return list(evaluate(tiny_model, [tiny_model_f16], resources.evaluation_text(),
                             n_ctx=128, max_chunks=40, speed_reps=0))

    with contextlib.ExitStack() as stack:
        filler = None
        if limit == "full disk":
            disk = stack.enter_context(small_disk(tmp_path / "disk", 8 * MiB))
            monkeypatch.setenv("QUANTDESK_HOME", str(disk / "home"))
            filler = fill(disk, leave=1 * MiB)
            reason = "No space left on device"
        else:
            reason = "File too large"
        with (child_file_size_limit(1 * MiB, tmp_path) if filler is None
              else contextlib.nullcontext()), pytest.raises(EvalError) as raised:
            run()
        cache = paths.cache_dir() / "reference"
        _assert_clear(str(raised.value), "The reference's token distributions (4 MiB) cannot be "
                      f"stored in {cache} ({reason})", "Free some space on that disk",
                      "fewer chunks")
        assert list(cache.iterdir()) == []  # nothing half-written keeps the space

        if filler is not None:
            filler.unlink()
        result = run()[-1]
        assert isinstance(result, Evaluation)
        assert result.reference.quality.tokens_scored == 40 * 63
        assert 0 < (result.candidates[0].quality.kld_mean or 0) < 0.01


def _imatrix() -> Imatrix:
    """Statistics of 2 MiB: 128 weights of 4,096 columns."""
    rng = np.random.default_rng(0)
    names = [f"blk.{i}.ffn_down.weight" for i in range(128)]
    return Imatrix({n: rng.random(4096) for n in names}, dict.fromkeys(names, 512), 4, 512,
                   ("calibration",))


def test_imatrix_save_on_a_full_disk(tmp_path: Path) -> None:
    """save() writes in the calling process: the app's, here the test's."""
    imatrix = _imatrix()
    with small_disk(tmp_path / "disk", 4 * MiB) as disk:
        filler = fill(disk, leave=512 * KiB)
        out = disk / "tiny.imatrix.gguf"
        with pytest.raises(ImatrixError) as raised:
            save(imatrix, out)
        _assert_clear(str(raised.value), "could not be written",
                      f"not enough disk space for {out.name}", "Free some space")
        assert list(disk.iterdir()) == [filler]

        filler.unlink()
        save(imatrix, out)
        again = load(out)
        assert again.counts == imatrix.counts
        np.testing.assert_allclose(again.sums["blk.7.ffn_down.weight"],
                                   imatrix.sums["blk.7.ffn_down.weight"], rtol=1e-6)


def test_imatrix_save_past_a_file_size_limit(tmp_path: Path) -> None:
    """The same in a process with a file-size limit (a child, so that pytest is not limited)."""
    out = tmp_path / "out" / "tiny.imatrix.gguf"
    with child_file_size_limit(256 * KiB, tmp_path), pytest.raises(ChildFailed) as raised:
        call_in_child(save, _imatrix(), out)
    message = str(raised.value).removeprefix("ImatrixError: ")
    assert message != str(raised.value)  # save's own error, not an OSError
    _assert_clear(message, "could not be written", f"{out.name} grew larger", "File too large")
    assert list(out.parent.iterdir()) == []


def test_a_child_killed_by_sigxfsz_is_explained(tmp_path: Path) -> None:
    """Python ignores SIGXFSZ, but native code may restore it: then the kernel kills the
    process that writes past its size limit, and the job must still say why."""
    out = tmp_path / "model.gguf"
    with pytest.raises(QuantizeError) as raised, child_errors(
            QuantizeError, QuantizeError, cancelled_message="", failed_prefix="Quantization "
            "failed: ", crashed="llama.cpp's quantizer stopped unexpectedly", target=out):
        call_in_child(write_past_own_limit, str(tmp_path / "big.bin"), 64 * KiB)
    _assert_clear(str(raised.value), "Quantization failed: model.gguf grew larger",
                  "File too large")
    assert "SIGXFSZ" in describe_exit(-signal.SIGXFSZ)
    assert "largest size allowed" in describe_exit(-signal.SIGXFSZ)
