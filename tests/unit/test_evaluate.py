"""Evaluation: perplexity, KL divergence and agreement like llama.cpp's perplexity tool."""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core import resources
from app.core.storage import Storage
from app.engine.evaluate import (
    EvalCancelled,
    EvalError,
    Evaluation,
    VariantDone,
    VariantResult,
    compare_rows,
    compress_reference,
    evaluate,
    log_softmax,
    reference_cache_dir,
    top_k,
)
from app.engine.events import Progress
from app.engine.quantize import QuantizeOptions, quantize
from tests.helpers.engine_children import is_gone, the_job_child

TEXT = resources.evaluation_text()


def _run(ref: Path, cands: list[Path], text: str = TEXT, **kw: object) -> list[object]:
    return list(evaluate(ref, cands, text, speed_reps=0, **kw))  # type: ignore[arg-type]


def test_compact_reference_estimates_kld_of_full_distributions() -> None:
    """Top-128 plus 128 sampled tail tokens against the exact sum over a 5,000-token vocab."""
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((200, 5000)) * 3).astype(np.float32)
    noisy = logits + rng.standard_normal(logits.shape).astype(np.float32) * 0.3
    lp, lq = log_softmax(logits), log_softmax(noisy)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-5)
    exact = (np.exp(lp.astype(np.float64)) * (lp - lq)).sum(1)
    packed = compress_reference(lp, np.random.default_rng(0))
    assert packed["top_ids"].shape == packed["tail_ids"].shape == (200, 128)
    assert np.all(np.diff(packed["top_lp"].astype(np.float32), axis=1) <= 0)  # sorted
    assert not np.isin(packed["tail_ids"][0], packed["top_ids"][0]).any()
    got = compare_rows(lq, packed)
    assert abs(got["kld"].mean() / exact.mean() - 1) < 0.02
    assert np.array_equal(got["same_top"], lq.argmax(1) == lp.argmax(1))


def test_top_k_finds_each_rows_largest_values_also_with_ties() -> None:
    rng = np.random.default_rng(2)
    lp = rng.standard_normal((50, 3000)).astype(np.float32)
    lp[7, :20] = 9.0  # 20 equal values straddling the 16th place
    lp[8, :] = 1.0  # a row of nothing but ties
    top = top_k(lp, 16)
    assert top.shape == (50, 16)
    for r in range(50):
        assert len(set(top[r])) == 16
        expected = np.sort(lp[r])[-16:]
        np.testing.assert_array_equal(np.sort(lp[r, top[r]]), expected)
    assert set(top[7]) <= set(range(20))


def test_the_reference_against_itself_scores_zero(tiny_model: Path) -> None:
    events = _run(tiny_model, [tiny_model], n_ctx=128, max_chunks=3)
    result = events[-1]
    assert isinstance(result, Evaluation)
    ref, same = result.reference, result.candidates[0]
    assert same.quality.ppl == pytest.approx(ref.quality.ppl, rel=1e-6)
    assert abs(same.quality.kld_mean or 1) < 1e-3  # float16 storage of the reference
    assert same.quality.same_top == 1.0
    assert ref.quality.tokens_scored == 3 * 63  # second half of each chunk, minus the last
    assert math.isfinite(ref.quality.ppl) and ref.quality.ppl_error > 0
    assert ref.bits_per_weight == 32.0  # F32 tensors, as llama.cpp counts BPW


def test_smollm2_quantizations_order_as_expected(smollm2_f16: Path, tmp_path: Path) -> None:
    cands = []
    for quant in ("Q8_0", "Q4_K_M", "Q2_K"):
        out = tmp_path / f"s-{quant}.gguf"
        list(quantize(smollm2_f16, out, QuantizeOptions(quant)))
        cands.append(out)
    result = _run(smollm2_f16, cands, max_chunks=2)[-1]
    assert isinstance(result, Evaluation)
    q8, q4, q2 = (c.quality for c in result.candidates)
    assert q8.kld_mean < q4.kld_mean < q2.kld_mean  # type: ignore[operator]
    assert q8.same_top > q4.same_top > q2.same_top  # type: ignore[operator]
    assert result.reference.quality.ppl < q2.ppl
    assert [c.quant for c in result.candidates] == ["Q8_0", "Q4_K_M", "Q2_K"]
    sizes = [c.size for c in result.candidates]
    assert sizes == sorted(sizes, reverse=True)


def test_reference_cache_is_reused_and_invalidated(tiny_model: Path, tiny_model_f16: Path,
                                                   tmp_path: Path) -> None:
    first = _run(tiny_model, [tiny_model_f16], n_ctx=128, max_chunks=2)
    again = _run(tiny_model, [tiny_model_f16], n_ctx=128, max_chunks=2)
    done = [e for e in first if isinstance(e, VariantDone)]
    reused = [e for e in again if isinstance(e, VariantDone)]
    assert not done[0].from_cache and reused[0].from_cache
    assert reused[0].result.quality.ppl == done[0].result.quality.ppl
    assert reused[1].result.quality.kld_mean == done[1].result.quality.kld_mean
    # another text, another n_ctx, or a changed reference file: a new cache
    other = reference_cache_dir(tiny_model, TEXT + ".", 128, 2)
    assert other != reference_cache_dir(tiny_model, TEXT, 128, 2)
    assert reference_cache_dir(tiny_model, TEXT, 64, 2) != reference_cache_dir(
        tiny_model, TEXT, 128, 2)
    copy = tmp_path / "ref.gguf"
    data = bytearray(tiny_model.read_bytes())
    data[-1] ^= 1  # the last weight changes
    copy.write_bytes(bytes(data))
    assert reference_cache_dir(copy, TEXT, 128, 2) != reference_cache_dir(tiny_model, TEXT, 128,
                                                                          2)
    changed = _run(copy, [tiny_model_f16], n_ctx=128, max_chunks=2)
    assert not next(e for e in changed if isinstance(e, VariantDone)).from_cache


def test_a_different_model_is_refused(tiny_model: Path, smollm2: Path) -> None:
    with pytest.raises(EvalError, match="not variants of the same model"):
        _run(tiny_model, [smollm2], n_ctx=128, max_chunks=1)


def test_short_text_and_broken_file(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="at least 128"):
        _run(tiny_model, [tiny_model], text="short", n_ctx=128)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(EvalError, match=r"broken\.gguf|truncated"):
        _run(tiny_model, [broken], n_ctx=128)


def test_results_are_stored_and_reopened(tiny_model: Path, tiny_model_f16: Path) -> None:
    result = _run(tiny_model, [tiny_model_f16], n_ctx=128, max_chunks=2)[-1]
    assert isinstance(result, Evaluation)
    store = Storage()
    eval_id = store.add_evaluation("tiny", result.to_json())
    store.add_vote(eval_id, result.candidates[0].name)
    store.close()
    again = Storage().evaluation(eval_id)
    reopened = Evaluation.from_json(again.result)
    assert reopened == result
    assert again.votes == {result.candidates[0].name: 1}
    assert reopened.text_sha256 and reopened.build.startswith("llama-cpp-python")
    assert reopened.reference.fingerprint != ""


def _numbers(result: VariantResult) -> dict[str, Any]:
    """What an evaluation measures of a variant's quality (its timing aside)."""
    quality = asdict(result.quality)
    del quality["seconds"]
    return quality


def _cancel_at(tiny_model: Path, candidate: Path, stop_on: str, cache: Path
               ) -> tuple[list[object], Any]:
    """Evaluate until a chunk of the pass whose messages start with ``stop_on`` is done, then
    cancel; returns what came before and the child that was running the pass."""
    seen: list[object] = []
    running: list[Any] = []
    with pytest.raises(EvalCancelled, match="cancelled"):
        for event in evaluate(tiny_model, [candidate], TEXT, n_ctx=128, max_chunks=40,
                              speed_reps=0, cancel=lambda: bool(running)):
            seen.append(event)
            if isinstance(event, Progress) and event.message.startswith(stop_on) \
                    and event.done >= 1 and not running:
                running.append(the_job_child())
                if stop_on.startswith(tiny_model.name):  # the reference, half written now
                    assert (cache / "nll.npy").is_file() and not (cache / "meta.json").exists()
                assert event.done < event.total
    return seen, running[0]


def test_cancel_kills_the_child_and_leaves_no_reference_a_later_run_would_read(
        tiny_model: Path, tiny_model_f16: Path) -> None:
    cache = reference_cache_dir(tiny_model, TEXT, 128, 40)
    uninterrupted = _run(tiny_model, [tiny_model_f16], n_ctx=128, max_chunks=40)[-1]
    assert isinstance(uninterrupted, Evaluation)
    shutil.rmtree(cache)  # start again from nothing (the cache's place seeds its sampling)
    ref_name = f"{tiny_model.name}: "

    seen, child = _cancel_at(tiny_model, tiny_model_f16, ref_name, cache)
    assert is_gone(child)
    assert not any(isinstance(e, VariantDone) for e in seen)
    assert not cache.exists()  # the half-written reference was removed

    seen, child = _cancel_at(tiny_model, tiny_model_f16, f"{tiny_model_f16.name}: ",
                             cache)
    assert is_gone(child)
    reference = [e for e in seen if isinstance(e, VariantDone)]
    assert len(reference) == 1 and not reference[0].from_cache  # computed again, in full
    assert _numbers(reference[0].result) == _numbers(uninterrupted.reference)
    assert (cache / "meta.json").is_file()  # a complete reference stays for the next run

    events = _run(tiny_model, [tiny_model_f16], n_ctx=128, max_chunks=40)
    done = [e for e in events if isinstance(e, VariantDone)]
    assert done[0].from_cache
    result = events[-1]
    assert isinstance(result, Evaluation)
    assert _numbers(result.reference) == _numbers(uninterrupted.reference)
    assert _numbers(result.candidates[0]) == _numbers(uninterrupted.candidates[0])


def test_scoring_on_several_threads_writes_what_one_thread_writes(
        tiny_model: Path, tiny_model_f16: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The passes themselves (run here in this process), with chunks scored in 1 and in 4
    parts: the reference's cache and a candidate's per-token results are the same."""
    from app.engine import evaluate

    text = resources.evaluation_text()
    results = {}
    for workers in (1, 4):
        monkeypatch.setattr(evaluate, "_score_workers", lambda _threads, n=workers: n)
        cache = tmp_path / f"cache-{workers}"
        evaluate._run_variant(lambda _e: None, str(tiny_model_f16), text, 256, 3, str(cache),
                              True, 0, 1)
        candidate = evaluate._run_variant(lambda _e: None, str(tiny_model), text, 256, 3,
                                          str(cache), False, 0, 1)
        arrays = {p.stem: np.load(p) for p in cache.glob("*.npy")}
        results[workers] = arrays, candidate
    assert len(evaluate._row_parts(127, 4)) == 3  # parts of at least 32 rows
    (one, cand_one), (four, cand_four) = results[1], results[4]
    assert one.keys() == four.keys() and len(one) == 8
    for key in one:
        assert np.array_equal(one[key], four[key]), key
    for key in ("nll", "kld", "same", "dp"):
        assert np.array_equal(cand_one[key], cand_four[key]), key
    assert cand_one["kld"].mean() > 0  # a real comparison (F32 against F16), not zeros


def test_a_chunk_compressed_in_parts_is_the_chunk_compressed_whole() -> None:
    """The reference pass scores a chunk's rows in parts on several threads: the cache it
    writes is the one a single thread writes, and the tail's mass is the exact one."""
    from app.engine.evaluate import _row_parts, compress_reference, log_softmax, sample_offsets

    logits = np.random.default_rng(0).standard_normal((255, 4096)).astype(np.float32) * 3
    lp = log_softmax(logits)
    whole = compress_reference(lp, np.random.default_rng(7))
    offsets = sample_offsets(np.random.default_rng(7), 255)
    parts = [compress_reference(lp[part], offsets[part]) for part in _row_parts(255, 3)]
    assert len(parts) == 3
    for key, value in whole.items():
        assert np.array_equal(value, np.concatenate([p[key] for p in parts]))
    exact = np.exp(lp.astype(np.float64)).sum(1) - np.take_along_axis(
        np.exp(lp.astype(np.float64)), whole["top_ids"].astype(np.int64), 1).sum(1)
    assert np.allclose(whole["tail_mass"], exact, rtol=1e-5)
    # every sampled tail token is outside the top tokens
    assert not any(set(t) & set(top) for t, top in zip(whole["tail_ids"], whole["top_ids"],
                                                        strict=True))
