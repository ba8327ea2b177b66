"""Quantization through llama.cpp's quantizer in a child process."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core.gguf_info import read_model_info
from app.engine.events import Progress
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling
from app.engine.quantize import (
    QuantizeCancelled,
    Quantized,
    QuantizeError,
    QuantizeOptions,
    Warning_,
    estimate_size,
    quantize,
    quantize_many,
)
from tests.helpers.engine_children import is_gone, the_job_child


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.type_name for t in read_model_info(path).tensors}


def test_several_types_in_one_job_load_and_generate(tiny_model_f16: Path,
                                                     tmp_path: Path) -> None:
    targets = [(QuantizeOptions(q), tmp_path / f"tiny-{q}.gguf")
               for q in ("Q8_0", "Q4_K_M", "Q2_K")]
    events = list(quantize_many(tiny_model_f16, targets))
    done = [e for e in events if isinstance(e, Quantized)]
    assert [d.quant for d in done] == ["Q8_0", "Q4_K_M", "Q2_K"]
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 21
    for d in done:
        assert read_model_info(d.path).file_type == d.quant
        assert d.size == d.path.stat().st_size
    sizes = [d.size for d in done]
    assert sizes == sorted(sizes, reverse=True)
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(done[1].path), n_ctx=256))
        reply = list(host.chat_stream([ChatMessage("user", "hi")], Sampling(max_tokens=8)))[-1]
        assert isinstance(reply, ReplyDone) and reply.metrics.generated_tokens == 8
    finally:
        host.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t[1].name for t in targets)


def test_mixed_precision_overrides(tiny_model_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "mixed.gguf"
    options = QuantizeOptions("Q4_K_M", output_tensor_type="Q8_0", token_embedding_type="Q6_K",
                              overrides=(("attn_v", "Q8_0"), ("ffn_down", "Q5_K")))
    list(quantize(tiny_model_f16, out, options))
    types = _types(out)
    assert types["output.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "Q6_K"
    assert types["blk.0.attn_v.weight"] == types["blk.1.attn_v.weight"] == "Q8_0"
    assert types["blk.1.ffn_down.weight"] == "Q5_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K"


def test_pure_puts_every_matrix_at_the_target_type(tiny_model_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "pure.gguf"
    list(quantize(tiny_model_f16, out, QuantizeOptions("Q4_K_M", pure=True)))
    info = read_model_info(out)
    matrices = {t.type_name for t in info.tensors if len(t.shape) == 2}
    assert matrices == {"Q4_K"}


def test_dry_run_predicts_the_size_and_writes_nothing(tiny_model_f16: Path,
                                                      tmp_path: Path) -> None:
    before = set(tiny_model_f16.parent.iterdir())
    estimate = estimate_size(tiny_model_f16, QuantizeOptions("Q4_K_M"))
    assert set(tiny_model_f16.parent.iterdir()) == before
    out = tmp_path / "q.gguf"
    list(quantize(tiny_model_f16, out, QuantizeOptions("Q4_K_M")))
    tensor_bytes = read_model_info(out).tensor_bytes
    assert abs(estimate.bytes - tensor_bytes) <= 0.01 * tensor_bytes + 16 * 1024
    assert 4.5 < estimate.bits_per_weight < 5.5


def test_cancel_leaves_no_file(smollm2_f16: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    out = tmp_path / "cancelled.gguf"
    with pytest.raises(QuantizeCancelled):
        for event in quantize(smollm2_f16, out, QuantizeOptions("Q4_K_M"),
                              cancel=lambda: bool(seen)):
            if isinstance(event, Progress):
                seen.append(event)
    assert seen and seen[0].total == 272
    assert list(tmp_path.iterdir()) == []


def test_a_quantizer_killed_mid_job_is_explained_and_leaves_nothing(
        smollm2_f16: Path, tiny_model_f16: Path, tmp_path: Path) -> None:
    """SIGKILL (what the out-of-memory killer sends) while llama_model_quantize runs."""
    out = tmp_path / "killed.gguf"
    killed = []
    with pytest.raises(QuantizeError) as raised:
        for event in quantize(smollm2_f16, out, QuantizeOptions("Q4_K_M")):
            if isinstance(event, Progress) and not killed:
                assert event.done < event.total  # 272 tensors: it is mid-job
                killed.append(the_job_child())
                killed[0].kill()
    assert not isinstance(raised.value, QuantizeCancelled)
    assert str(raised.value) == ("llama.cpp's quantizer stopped unexpectedly: the process was "
                                 "killed by SIGKILL (often the system ran out of memory).")
    assert is_gone(killed[0])
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .part

    done = list(quantize(tiny_model_f16, out, QuantizeOptions("Q8_0")))[-1]
    assert isinstance(done, Quantized) and read_model_info(out).file_type == "Q8_0"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_fallback_types_are_reported(smollm2_f16: Path, tmp_path: Path) -> None:
    events = list(quantize(smollm2_f16, tmp_path / "q.gguf", QuantizeOptions("Q4_K_M")))
    warnings = [e.message for e in events if isinstance(e, Warning_)]
    assert any("180 of 272 tensors" in w for w in warnings)


def test_requantizing_needs_consent(smollm2: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="already quantized \\(Q4_1\\)"):
        list(quantize(smollm2, tmp_path / "x.gguf", QuantizeOptions("Q8_0")))
    events = list(quantize(smollm2, tmp_path / "x.gguf",
                           QuantizeOptions("Q8_0", allow_requantize=True)))
    assert isinstance(events[0], Warning_) and "errors of both" in events[0].message
    assert isinstance(events[-1], Quantized)


def test_types_needing_an_imatrix_are_refused(tiny_model_f16: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="importance matrix"):
        list(quantize(tiny_model_f16, tmp_path / "x.gguf", QuantizeOptions("IQ2_XXS")))


def test_source_that_is_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"{}" * 100)
    with pytest.raises(QuantizeError, match="not a GGUF model file"):
        list(quantize(bad, tmp_path / "x.gguf", QuantizeOptions("Q8_0")))


def test_full_disk_is_refused_before_starting(tiny_model_f16: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=1024))
    with pytest.raises(QuantizeError, match="Not enough disk space"):
        list(quantize(tiny_model_f16, tmp_path / "x.gguf", QuantizeOptions("Q8_0")))
    assert list(tmp_path.iterdir()) == []


def test_dequantized_f16_holds_the_same_values(smollm2: Path, smollm2_f16: Path) -> None:
    src = gguf.GGUFReader(str(smollm2))
    f16 = gguf.GGUFReader(str(smollm2_f16))
    assert read_model_info(smollm2_f16).file_type == "F16"
    assert read_model_info(smollm2_f16).n_params == read_model_info(smollm2).n_params
    name = "blk.3.ffn_down.weight"
    a = next(t for t in src.tensors if t.name == name)
    b = next(t for t in f16.tensors if t.name == name)
    expected = gguf.quants.dequantize(a.data, a.tensor_type)
    assert b.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_allclose(np.asarray(b.data, dtype=np.float32), expected, rtol=1e-3,
                               atol=1e-4)
