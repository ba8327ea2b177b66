"""The pipeline with real engine steps on the tiny model: stored steps, reuse, recomputation,
cancel, stale files, failures and the run's progress."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core import runs as R
from app.core.storage import Storage
from app.pipeline import events as ev
from app.pipeline import plans
from app.pipeline.runner import Runner, interrupted
from app.pipeline.texts import TextSource
from tests.helpers.tiny_model import write_tiny_llama


@pytest.fixture
def store() -> Storage:
    return Storage()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-f16.gguf", f16=True)


def _run(store: Storage, plan: plans.RunPlan, cancel=None) -> tuple[int, list[ev.Event]]:
    run_id = plans.create(store, plan)
    return run_id, list(Runner().run(run_id, cancel))


def _finished(events: list[ev.Event]) -> dict[str, ev.StepFinished]:
    return {e.key: e for e in events if isinstance(e, ev.StepFinished)}


def test_a_run_stores_its_steps_and_a_second_identical_run_computes_nothing(
        store: Storage, source: Path, tmp_path: Path) -> None:
    plan = plans.quantize_plan(source, ["Q8_0", "Q4_0"], tmp_path / "out",
                               calibration=TextSource.calibration(), imatrix_chunks=2)
    first_id, first = _run(store, plan)
    done = _finished(first)
    assert list(done) == ["imatrix", "quantize:Q8_0", "quantize:Q4_0"]
    assert not any(e.reused for e in done.values())
    outputs = {k: Path(e.outputs["path"]) for k, e in done.items()}
    assert outputs["quantize:Q4_0"].name == "tiny-Q4_0-imat.gguf"
    mtimes = {k: p.stat().st_mtime_ns for k, p in outputs.items()}
    assert isinstance(first[-1], ev.RunFinished)
    stored = R.RunStore(store)
    assert stored.run(first_id).status == R.DONE
    assert all(s.status == R.DONE and s.seconds and s.fingerprint for s in stored.steps(first_id))

    second_id, second = _run(store, plan)
    again = _finished(second)
    assert all(e.reused and e.seconds == 0 for e in again.values())
    assert {k: Path(e.outputs["path"]).stat().st_mtime_ns for k, e in again.items()} == mtimes
    first_steps = {s.key: s.id for s in stored.steps(first_id)}
    assert {s.key: s.reused_from for s in stored.steps(second_id)} == first_steps


def test_a_changed_input_or_a_missing_output_is_computed_again(
        store: Storage, source: Path, tmp_path: Path) -> None:
    plan = plans.quantize_plan(source, ["Q8_0", "Q4_0"], tmp_path / "out")
    _run(store, plan)
    Path(plan.step("quantize:Q4_0").params["out"]).unlink()
    done = _finished(_run(store, plan)[1])
    assert done["quantize:Q8_0"].reused and not done["quantize:Q4_0"].reused
    write_tiny_llama(source, f16=True, seed=1)  # same path, other weights
    done = _finished(_run(store, plan)[1])
    assert not done["quantize:Q8_0"].reused and not done["quantize:Q4_0"].reused


def test_cancel_leaves_no_partial_file_and_the_run_resumes(store: Storage, source: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plans.quantize_plan(source, ["Q8_0", "Q4_0"], out,
                               calibration=TextSource.calibration(), imatrix_chunks=4)
    run_id = plans.create(store, plan)
    seen: list[ev.Event] = []
    with pytest.raises(ev.PipelineCancelled):
        for event in Runner().run(run_id, cancel=lambda: any(
                isinstance(e, ev.StepProgress) and e.key == "imatrix" and e.done >= 1
                for e in seen)):
            seen.append(event)
    failed = [e for e in seen if isinstance(e, ev.StepFailed)]
    assert len(failed) == 1 and failed[0].cancelled and failed[0].key == "imatrix"
    assert not out.exists() or list(out.iterdir()) == []  # no partial imatrix, nothing else
    stored = R.RunStore(store)
    assert stored.run(run_id).status == R.CANCELLED
    assert [r.id for r in interrupted(store)] == [run_id]
    resumed = list(Runner().run(run_id))
    assert isinstance(resumed[-1], ev.RunFinished)
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny-Q4_0-imat.gguf", "tiny-Q8_0-imat.gguf", "tiny.imatrix.gguf"]
    assert interrupted(store) == []


def test_stale_temporary_files_of_a_killed_run_are_removed_before_the_step_runs(
        store: Storage, source: Path, tmp_path: Path) -> None:
    plan = plans.quantize_plan(source, ["Q8_0"], tmp_path / "out")
    target = Path(plan.step("quantize:Q8_0").params["out"])
    target.parent.mkdir(parents=True)
    stale = target.with_name(f".{target.name}.part")
    stale.write_bytes(b"half a file from a process that was killed")
    _run(store, plan)
    assert not stale.exists() and target.is_file()


def test_a_failing_step_is_recorded_with_its_message(store: Storage, tmp_path: Path) -> None:
    bad = tmp_path / "bad-F16.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    plan = plans.quantize_plan(bad, ["Q8_0"], tmp_path / "out")
    run_id = plans.create(store, plan)
    seen: list[ev.Event] = []
    with pytest.raises(ev.PipelineError) as raised:
        for event in Runner().run(run_id):
            seen.append(event)
    assert not isinstance(raised.value, ev.PipelineCancelled)
    assert str(raised.value).startswith("Quantize to Q8_0: ")
    assert "bad-F16.gguf" in str(raised.value)
    stored = R.RunStore(store)
    assert stored.run(run_id).status == R.FAILED
    assert stored.steps(run_id)[0].status == R.FAILED
    assert isinstance(seen[-1], ev.StepFailed) and not seen[-1].cancelled


def test_a_missing_input_fails_before_anything_runs(store: Storage, tmp_path: Path) -> None:
    plan = plans.quantize_plan(tmp_path / "gone-F16.gguf", ["Q8_0"], tmp_path / "out")
    with pytest.raises(ev.PipelineError, match=r"gone-F16\.gguf cannot be read"):
        _run(store, plan)


def test_progress_covers_the_run_and_the_evaluation_is_stored(
        store: Storage, source: Path, tmp_path: Path) -> None:
    quantized = _finished(_run(store, plans.quantize_plan(source, ["Q8_0", "Q4_0"],
                                                          tmp_path / "out"))[1])
    candidates = [Path(quantized[k].outputs["path"]) for k in ("quantize:Q8_0", "quantize:Q4_0")]
    plan = plans.evaluate_plan(source, candidates, TextSource.evaluation(), chunks=2,
                               speed_reps=1)
    run_id, events = _run(store, plan)
    progress = [e for e in events if isinstance(e, ev.RunProgress)]
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert progress[-1].steps_done == progress[-1].steps_total == 4
    assert progress[-1].eta_seconds == 0.0
    summary = _finished(events)["summary"].outputs
    stored = store.evaluation(summary["evaluation_id"]).result
    assert [c["quant"] for c in stored["candidates"]] == ["Q8_0", "Q4_0"]
    q8, q4 = (c["quality"]["kld_mean"] for c in stored["candidates"])
    assert 0 < q8 < q4  # more bits, closer to the reference
    # the same evaluation again is found, not computed (and not stored twice)
    again = _finished(_run(store, plan)[1])
    assert all(e.reused for e in again.values())
    assert len(store.evaluations()) == 1
    # ... until the stored comparison is deleted: then only the summary runs again
    store.delete_evaluation(summary["evaluation_id"])
    again = _finished(_run(store, plan)[1])
    assert [k for k, e in again.items() if not e.reused] == ["summary"]
    del run_id


def test_a_run_claimed_by_a_live_process_is_not_offered_for_resuming(
        store: Storage, source: Path, tmp_path: Path) -> None:
    import psutil

    run_id = plans.create(store, plans.quantize_plan(source, ["Q8_0"], tmp_path / "out"))
    runs = R.RunStore(store)
    runs.claim(run_id, os.getpid(), psutil.Process().create_time())
    assert interrupted(store) == []  # this process is running it
    runs.claim(run_id, os.getpid(), psutil.Process().create_time() - 1000)  # a reused pid
    assert [r.id for r in interrupted(store)] == [run_id]
