"""Importance matrices through llama.cpp's evaluation callback, and quantizing with them."""

from __future__ import annotations

import threading
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core.gguf_info import read_model_info
from app.engine.events import Progress
from app.engine.imatrix import Computed, ImatrixCancelled, ImatrixError, compute, load
from app.engine.quantize import QuantizeError, QuantizeOptions, quantize

TEXT = " ".join(f"Line {i}: the {w} sat near the {v} and counted {i * 3} stones."
                for i, (w, v) in enumerate(zip(["cat", "owl", "fox", "ram"] * 40,
                                               ["well", "gate", "mill", "barn"] * 40,
                                               strict=True)))


@pytest.fixture(scope="module")
def tiny_imatrix(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imatrix") / "tiny.imatrix.gguf"
    events = list(compute(tiny_model, TEXT, out, n_ctx=128, max_chunks=3, dataset="test"))
    assert isinstance(events[-1], Computed)
    return out


def test_every_block_matrix_is_collected_with_its_row_count(tiny_model: Path,
                                                            tiny_imatrix: Path) -> None:
    m = load(tiny_imatrix)
    weights = {t.name for t in read_model_info(tiny_model).tensors
               if t.name.startswith("blk.") and len(t.shape) == 2}
    assert set(m.sums) == weights  # q, k, v, output, gate, up, down of both blocks
    assert set(m.counts.values()) == {3 * 128}
    assert (m.chunks, m.chunk_size, m.datasets) == (3, 128, ("test",))
    # the shared inputs: Q, K and V see the same activations, as do gate and up
    np.testing.assert_array_equal(m.sums["blk.1.attn_q.weight"], m.sums["blk.1.attn_v.weight"])
    np.testing.assert_array_equal(m.sums["blk.0.ffn_up.weight"], m.sums["blk.0.ffn_gate.weight"])
    assert m.sums["blk.0.ffn_down.weight"].shape == (512,)  # the FFN's width


def test_first_layer_statistics_match_numpy(tiny_model: Path, tiny_imatrix: Path) -> None:
    """blk.0's attention input is rmsnorm(embedding) × attn_norm: recompute it from the file."""
    from app.engine.child import call_in_child

    tokens = call_in_child(_tokens, str(tiny_model), TEXT)[: 3 * 128].reshape(3, 128)
    tokens[:, 0] = 1  # each chunk starts with BOS, as llama.cpp's imatrix tool does
    reader = gguf.GGUFReader(str(tiny_model))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    x = tensors["token_embd.weight"][tokens.ravel()].astype(np.float64)
    normed = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5)
    normed *= tensors["blk.0.attn_norm.weight"]
    expected = (normed * normed).sum(axis=0)
    got = load(tiny_imatrix).sums["blk.0.attn_q.weight"]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def _tokens(model: str, text: str) -> np.ndarray:
    from app.engine.runner import Runner

    with Runner(model, 128) as runner:
        return runner.tokenize(text)


def test_imatrix_changes_the_quantization_and_enables_iq_types(
        tiny_model_f16: Path, tiny_imatrix: Path, tmp_path: Path) -> None:
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    list(quantize(tiny_model_f16, plain, QuantizeOptions("Q4_K_M")))
    list(quantize(tiny_model_f16, weighted, QuantizeOptions("Q4_K_M",
                                                            imatrix=str(tiny_imatrix))))
    assert plain.stat().st_size == weighted.stat().st_size
    assert plain.read_bytes() != weighted.read_bytes()

    iq = tmp_path / "iq2.gguf"
    with pytest.raises(QuantizeError, match="importance matrix"):
        list(quantize(tiny_model_f16, iq, QuantizeOptions("IQ2_XS")))
    list(quantize(tiny_model_f16, iq, QuantizeOptions("IQ2_XS", imatrix=str(tiny_imatrix))))
    assert read_model_info(iq).file_type == "IQ2_XS"


def test_imatrix_of_another_model_is_refused(smollm2: Path, tiny_imatrix: Path,
                                             tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="different model"):
        list(quantize(smollm2, tmp_path / "x.gguf",
                      QuantizeOptions("Q4_K_M", allow_requantize=True,
                                      imatrix=str(tiny_imatrix))))
    assert list(tmp_path.iterdir()) == []


def test_not_an_imatrix_is_refused(tiny_model: Path, tiny_model_f16: Path,
                                   tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match="not an importance matrix"):
        load(tiny_model)
    with pytest.raises(QuantizeError, match="cannot be used"):
        list(quantize(tiny_model_f16, tmp_path / "x.gguf",
                      QuantizeOptions("Q4_K_M", imatrix=str(tiny_model))))


def test_too_short_text_and_cancel(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.imatrix.gguf"
    with pytest.raises(ImatrixError, match="at least 128"):
        list(compute(tiny_model, "too short", out, n_ctx=128))
    stop = threading.Event()
    with pytest.raises(ImatrixCancelled):
        for event in compute(tiny_model, TEXT * 20, out, n_ctx=128, cancel=stop.is_set):
            if isinstance(event, Progress):
                stop.set()
    assert list(tmp_path.iterdir()) == []
