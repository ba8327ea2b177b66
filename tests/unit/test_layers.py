"""The layer view's numbers: per-tensor relative error of dequantized weights, sampling, and
one tensor's histograms, on the tiny model and its llama.cpp quantizations."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core.gguf_info import read_model_info
from app.engine import layers
from app.engine.child import call_in_child
from tests.helpers.quantize import quantize

FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q2_K": 10}


@pytest.fixture(scope="module")
def variants(tiny_model_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layer-variants")
    out = {}
    for name, ftype in FTYPES.items():
        path = folder / f"tiny-{name}.gguf"
        assert call_in_child(quantize, str(tiny_model_f16), str(path), ftype) == 0
        out[name] = path
    return out


def _report(ref: Path, cand: Path, **kw: int) -> layers.LayerReport:
    events = list(layers.tensor_errors(ref, cand, **kw))
    assert all(isinstance(e, layers.Progress) for e in events[:-1])
    report = events[-1]
    assert isinstance(report, layers.LayerReport)
    return report


def test_relative_error_matches_an_independent_read_of_both_files(
        tiny_model_f16: Path, variants: dict[str, Path]) -> None:
    report = _report(tiny_model_f16, variants["Q4_0"])
    ref = {t.name: t for t in gguf.GGUFReader(str(tiny_model_f16)).tensors}
    cand = {t.name: t for t in gguf.GGUFReader(str(variants["Q4_0"])).tensors}
    assert {t.name for t in report.tensors} == {n for n, t in ref.items() if len(t.shape) > 1}
    for t in report.tensors:
        a = gguf.quants.dequantize(ref[t.name].data, ref[t.name].tensor_type).astype(np.float64)
        b = gguf.quants.dequantize(cand[t.name].data, cand[t.name].tensor_type)
        expected = np.linalg.norm(b - a) / np.linalg.norm(a)
        assert t.rel_error == pytest.approx(expected, rel=1e-4), t.name
        assert t.candidate_type == cand[t.name].tensor_type.name
        assert not t.sampled


def test_grid_lays_tensors_out_by_layer_and_kind(tiny_model_f16: Path,
                                                 variants: dict[str, Path]) -> None:
    report = _report(tiny_model_f16, variants["Q4_0"])
    layer_ids, kinds, values = report.grid()
    assert layer_ids == [0, 1]
    assert kinds == ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                     "ffn_down"]
    by_name = {t.name: t.rel_error for t in report.tensors}
    assert values[1, kinds.index("ffn_down")] == by_name["blk.1.ffn_down.weight"]
    assert [t.name for t in report.outside_blocks()] == ["token_embd.weight", "output.weight"]
    assert report.worst(1)[0].rel_error == max(by_name.values())


def test_fewer_bits_mean_larger_errors_and_the_reference_against_itself_is_exact(
        tiny_model_f16: Path, variants: dict[str, Path]) -> None:
    mean = {name: np.mean([t.rel_error for t in _report(tiny_model_f16, path).tensors])
            for name, path in variants.items()}
    assert mean["Q8_0"] < mean["Q4_0"] < mean["Q2_K"]
    assert all(t.rel_error == 0 for t in _report(tiny_model_f16, tiny_model_f16).tensors)


def test_sample_rows_are_spread_evenly_and_bounded() -> None:
    rows = layers.sample_rows(1000, 256, 256 * 10)
    assert len(rows) == 10 and rows[0] == 0 and rows[-1] == 999
    assert np.all(np.diff(rows) >= 100)
    assert len(layers.sample_rows(1000, 256, 10**9)) == 1000
    assert len(layers.sample_rows(1000, 10**6, 10)) == 1  # always at least one row


def test_large_tensors_are_sampled_and_say_so(tiny_model_f16: Path,
                                              variants: dict[str, Path]) -> None:
    full = {t.name: t for t in _report(tiny_model_f16, variants["Q4_0"]).tensors}
    row_length = {t.name: t.shape[0] for t in read_model_info(tiny_model_f16).tensors}
    budget = 256 * 64
    sampled = _report(tiny_model_f16, variants["Q4_0"], max_values=budget)
    assert sampled.sampled and sampled.max_values == budget
    for t in sampled.tensors:
        assert t.rows == min(budget // row_length[t.name], t.total_rows)
        assert t.total_rows == full[t.name].total_rows
        # 32-64 rows of random weights estimate the whole tensor's error closely
        assert t.rel_error == pytest.approx(full[t.name].rel_error, rel=0.1)


def test_detail_histograms_show_values_collapsing_onto_fewer_levels(
        tiny_model_f16: Path, variants: dict[str, Path]) -> None:
    name = "blk.0.ffn_down.weight"
    d = layers.tensor_detail(tiny_model_f16, variants["Q4_0"], name, bins=40)
    n_values = d.rows * 512  # ffn_down rows are n_ff = 512 long
    assert d.reference_counts.sum() == d.candidate_counts.sum() == d.error_counts.sum() == n_values
    assert len(d.edges) == len(d.error_edges) == 41
    assert d.reference_levels > 30  # random F16 weights: nearly every value differs
    assert 10 < d.candidate_levels <= 16  # Q4_0: one scale and 16 levels per block of 32
    assert d.rel_error == pytest.approx(
        {t.name: t.rel_error for t in _report(tiny_model_f16, variants["Q4_0"]).tensors}[name])
    same = layers.tensor_detail(tiny_model_f16, tiny_model_f16, name, bins=40)
    assert same.max_abs_error == 0 and same.rms_error == 0
    assert np.array_equal(same.reference_counts, same.candidate_counts)


def test_another_model_or_a_broken_file_is_refused_clearly(
        tiny_model_f16: Path, smollm2: Path, tmp_path: Path) -> None:
    with pytest.raises(layers.LayerError, match="is not a quantization of"):
        list(layers.tensor_errors(tiny_model_f16, smollm2))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_f16.read_bytes()[:5000])
    with pytest.raises(layers.LayerError, match="truncated"):
        list(layers.tensor_errors(tiny_model_f16, broken))
    with pytest.raises(layers.LayerError, match="not a weight matrix"):
        layers.tensor_detail(tiny_model_f16, tiny_model_f16, "output_norm.weight")


def test_cancel_stops_the_comparison(tiny_model_f16: Path, variants: dict[str, Path]) -> None:
    seen: list[object] = []
    with pytest.raises(layers.LayerCancelled):
        for event in layers.tensor_errors(tiny_model_f16, variants["Q8_0"],
                                          cancel=lambda: len(seen) >= 2):
            seen.append(event)
    assert len(seen) == 2
