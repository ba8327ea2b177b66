"""Run (or resume) a stored run: each step in order, reusing what was already computed.

Before a step runs, the fingerprint of its inputs is taken: its kind, its parameters, a quick
fingerprint of each input file (size, first and last 8 MiB) and, for llama.cpp's steps, the
text's hash and the build. A finished step with the same kind and fingerprint — in this run or
any earlier one — whose output files still exist unchanged stands in for it: nothing is
computed twice. Otherwise the step's stale temporary files (from a process that was killed) are
removed and it runs; its outputs are stored with their files' fingerprints.

Resuming is running the same run again: finished steps are found by their fingerprints, the
interrupted one runs from its start. The run's ``pid`` tells a live run from an interrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psutil

from app.core import runs as R
from app.core.storage import Storage
from app.pipeline.events import (
    Event,
    PipelineCancelled,
    PipelineError,
    RunFinished,
    RunProgress,
    StepFailed,
    StepFinished,
    StepNote,
    StepProgress,
    StepStarted,
)
from app.pipeline.steps import (
    KINDS,
    Kind,
    Rates,
    StepContext,
    cancelled_errors,
    expected_errors,
)

log = logging.getLogger(__name__)

MIN_SECONDS_FOR_ETA = 1.0


def file_fingerprint(path: Path) -> str:
    """Quick identity of a file (see ``app.engine.evaluate.fingerprint``)."""
    from app.engine.evaluate import fingerprint

    return fingerprint(path)


def _process_started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def is_live(record: R.RunRecord) -> bool:
    """Whether the process that claimed a running run is still running it."""
    if record.status != R.RUNNING or record.pid is None:
        return False
    started = _process_started(record.pid)
    return started is not None and record.pid_started is not None and \
        abs(started - record.pid_started) < 1.0


def interrupted(store: Storage) -> list[R.RunRecord]:
    """Runs that stopped before the end (killed, failed or cancelled), not dismissed: the
    ones to offer "Continue where you left off" for. Runs live in another process are left
    out."""
    return [r for r in R.RunStore(store).unfinished() if not is_live(r)]


def step_fingerprint(kind: Kind, params: dict[str, Any]) -> str:
    """The fingerprint of a step's inputs; PipelineError when an input file is missing."""
    files = {}
    for path in kind.inputs(params):
        try:
            files[str(path)] = file_fingerprint(path)
        except OSError as exc:
            raise PipelineError(f"{path} cannot be read ({exc.strerror or exc}); it is needed "
                                "for this step.") from None
    data = {"kind": kind.name, "params": params, "files": files,
            **kind.extra_fingerprint(params)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _outputs_intact(outputs: dict[str, Any]) -> bool:
    for path, recorded in outputs.get("files", {}).items():
        try:
            if file_fingerprint(Path(path)) != recorded:
                return False
        except OSError:
            return False
    return True


class Runner:
    """Executes stored runs. ``db`` is the database path (None: the app's)."""

    def __init__(self, db: Path | None = None) -> None:
        self.db = db

    def run(self, run_id: int, cancel: Callable[[], bool] | None = None) -> Iterator[Event]:
        """Run or resume ``run_id``; yields events (app.pipeline.events); raises
        PipelineCancelled or PipelineError after the StepFailed event that says why."""
        store = Storage(self.db)
        try:
            yield from self._run(store, run_id, cancel or (lambda: False))
        finally:
            store.close()

    def _run(self, store: Storage, run_id: int, cancel: Callable[[], bool]) -> Iterator[Event]:
        runs = R.RunStore(store)
        record = runs.run(run_id)
        if is_live(record) and record.pid != os.getpid():
            raise PipelineError(f"Run {run_id} is running in another QuantDesk (process "
                                f"{record.pid}).")
        steps = runs.steps(run_id)
        runs.claim(run_id, os.getpid(), _process_started(os.getpid()) or 0.0)
        rates = Rates.from_json(record.options.get("rates"))
        predicted = [max(KINDS[s.kind].predict(s.params, rates), 0.05) for s in steps]
        ctx = StepContext(run_id, cancel, store)
        clock = _Clock(run_id, predicted)
        start = time.monotonic()
        try:
            for index, step in enumerate(steps):
                yield from self._step(runs, ctx, step, index, len(steps), clock)
                yield clock.progress(index + 1)
        except PipelineCancelled as exc:
            runs.finish(run_id, R.CANCELLED, str(exc))
            raise
        except PipelineError as exc:
            runs.finish(run_id, R.FAILED, str(exc))
            raise
        except BaseException:  # Ctrl-C in the CLI, the thread torn down: cancelled
            runs.finish(run_id, R.CANCELLED, "interrupted")
            raise
        runs.finish(run_id, R.DONE)
        yield RunFinished(run_id, dict(ctx.outputs), time.monotonic() - start)

    def _reusable(self, runs: R.RunStore, kind: Kind, fingerprint: str
                  ) -> R.StepRecord | None:
        for done in runs.done_with(kind.name, fingerprint):
            if done.outputs is not None and _outputs_intact(done.outputs) and \
                    kind.still_valid(done.outputs, runs.store):
                return done
        return None

    def _step(self, runs: R.RunStore, ctx: StepContext, step: R.StepRecord, index: int,
              total: int, clock: _Clock) -> Iterator[Event]:
        kind = KINDS[step.kind]
        run_id = ctx.run_id
        yield StepStarted(run_id, index, total, step.key, step.label)
        try:
            fingerprint = step_fingerprint(kind, step.params)
        except PipelineError as exc:
            runs.end_step(step.id, R.FAILED, str(exc))
            yield StepFailed(run_id, index, step.key, step.label, str(exc))
            raise
        done = self._reusable(runs, kind, fingerprint)
        if done is not None and done.outputs is not None:
            if done.id != step.id:  # another run's step: record where the outputs came from
                runs.finish_step(step.id, fingerprint, done.outputs, 0.0,
                                 done.reused_from or done.id)
            ctx.outputs[step.key] = done.outputs
            clock.reused(index)
            yield StepFinished(run_id, index, step.key, step.label, done.outputs, 0.0,
                               reused=True)
            return
        for stale in kind.stale(step.params):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                log.info("removed %s, left by an interrupted run", stale)
        runs.start_step(step.id, fingerprint)
        began = time.monotonic()
        try:
            outputs = yield from self._drive(kind.run(step.params, ctx), run_id, index,
                                             step.key, clock)
        except cancelled_errors() as exc:
            message = str(exc) or "Cancelled."
            runs.end_step(step.id, R.CANCELLED, message)
            yield StepFailed(run_id, index, step.key, step.label, message, cancelled=True)
            raise PipelineCancelled(message) from None
        except PipelineError as exc:
            runs.end_step(step.id, R.FAILED, str(exc))
            yield StepFailed(run_id, index, step.key, step.label, str(exc))
            raise
        except Exception as exc:  # every engine and hub error carries a readable message
            message = f"{step.label}: {exc}" if str(exc) else f"{step.label} failed."
            if isinstance(exc, expected_errors()):
                log.info("step %s of run %s failed: %s", step.key, run_id, exc)
            else:
                log.error("step %s of run %s failed", step.key, run_id, exc_info=True)
            runs.end_step(step.id, R.FAILED, message)
            yield StepFailed(run_id, index, step.key, step.label, message)
            raise PipelineError(message) from None
        except BaseException:
            runs.end_step(step.id, R.CANCELLED, "interrupted")
            raise
        seconds = time.monotonic() - began
        files = {}
        for path in kind.outputs(step.params):
            try:
                files[str(path)] = file_fingerprint(path)
            except OSError:
                message = f"{step.label} finished but {path} is missing."
                runs.end_step(step.id, R.FAILED, message)
                yield StepFailed(run_id, index, step.key, step.label, message)
                raise PipelineError(message) from None
        outputs = {**outputs, "files": files}
        runs.finish_step(step.id, fingerprint, outputs, seconds)
        ctx.outputs[step.key] = outputs
        clock.finished(index, seconds)
        yield StepFinished(run_id, index, step.key, step.label, outputs, seconds)

    @staticmethod
    def _drive(job: Generator[Any, None, dict[str, Any]], run_id: int, index: int, key: str,
               clock: _Clock) -> Generator[Event, None, dict[str, Any]]:
        """Translate a step's engine events; return its outputs."""
        from app.engine.events import Progress
        from app.engine.quantize import Warning_

        began = time.monotonic()
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                result: dict[str, Any] = stop.value or {}
                return result
            if isinstance(event, Progress):
                elapsed = time.monotonic() - began
                eta = None
                if event.total and event.done and elapsed >= MIN_SECONDS_FOR_ETA:
                    eta = elapsed / event.done * (event.total - event.done)
                yield StepProgress(run_id, index, key, event.done, event.total, event.message,
                                   eta)
                if event.total:
                    yield clock.progress(index, event.done / event.total, eta)
            elif isinstance(event, Warning_):
                yield StepNote(run_id, key, event.message)


class _Clock:
    """The run's progress and ETA: each step weighs its predicted seconds; the prediction is
    corrected by how the steps run so far compared with theirs."""

    def __init__(self, run_id: int, predicted: list[float]) -> None:
        self.run_id = run_id
        self.predicted = predicted
        self.total = sum(predicted)
        self.actual = 0.0
        self.expected = 0.0  # predicted seconds of the steps that actually ran

    def reused(self, index: int) -> None:
        pass  # done at no cost: it counts as done work, not as a measure of speed

    def finished(self, index: int, seconds: float) -> None:
        self.actual += seconds
        self.expected += self.predicted[index]

    def progress(self, index: int, fraction: float = 0.0,
                 step_eta: float | None = None) -> RunProgress:
        """Progress with steps before ``index`` done and ``fraction`` of step ``index``."""
        done = sum(self.predicted[:index])
        current = self.predicted[index] if index < len(self.predicted) else 0.0
        share = (done + current * fraction) / self.total if self.total else 1.0
        ratio = min(max(self.actual / self.expected, 0.25), 4.0) if self.expected > 5 else 1.0
        later = sum(self.predicted[index + 1:]) * ratio
        if index >= len(self.predicted):
            eta: float | None = 0.0
        elif step_eta is not None:
            eta = step_eta + later
        else:
            eta = current * (1 - fraction) * ratio + later
        return RunProgress(self.run_id, min(share, 1.0), eta, min(index, len(self.predicted)),
                           len(self.predicted))
