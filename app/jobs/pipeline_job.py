"""Run a stored pipeline run off the UI thread; its events arrive as Qt signals.

The run's engine work happens in child processes already; a worker thread iterates the runner
(which opens its own database connection on that thread) and forwards every event.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.jobs.engine_job import EngineJob
from app.pipeline import events as ev
from app.pipeline.runner import Runner


class PipelineJob(QObject):
    """``progress`` for each pipeline event, then ``finished`` (the RunFinished), ``failed``
    (the reason) or ``cancelled``."""

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, run_id: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.run_id = run_id
        self._job = EngineJob(lambda cancel: Runner().run(run_id, cancel),
                              (ev.PipelineCancelled,), self)
        self._job.progress.connect(self.progress)
        self._job.finished.connect(self.finished)
        self._job.failed.connect(self.failed)
        self._job.cancelled.connect(self.cancelled)

    @property
    def running(self) -> bool:
        return self._job.running

    def start(self) -> PipelineJob:
        self._job.start()
        return self

    def cancel(self) -> None:
        """Stop the run: the current step's child is killed and its partial output removed."""
        self._job.cancel()

    def wait(self, timeout: float = 30.0) -> None:
        self._job.wait(timeout)
