"""The layer view's engine work as jobs for the UI: the per-tensor error of a candidate against
its reference, and one tensor's detail (``app.engine.layers``, in a child process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject

from app.engine import layers
from app.engine.events import Progress
from app.engine.layers import BLOCK, MAX_VALUES, LayerReport, TensorDetail, TensorError
from app.jobs.engine_job import EngineJob

__all__ = ["BLOCK", "MAX_VALUES", "LayerReport", "Progress", "TensorDetail", "TensorError",
           "detail_job", "errors_job", "sensitivity_job"]


def errors_job(reference: Path, candidate: Path, max_values: int,
               parent: QObject | None = None) -> EngineJob:
    """Progress events, then the LayerReport."""
    def run(cancel: Callable[[], bool]) -> Iterator[Any]:
        yield from layers.tensor_errors(reference, candidate, max_values, cancel=cancel)

    return EngineJob(run, (layers.LayerCancelled,), parent)


def detail_job(reference: Path, candidate: Path, name: str, max_values: int,
               parent: QObject | None = None) -> EngineJob:
    """One TensorDetail (value and error histograms, distinct levels per block)."""
    def run(cancel: Callable[[], bool]) -> Iterator[Any]:
        yield layers.tensor_detail(reference, candidate, name, max_values)

    return EngineJob(run, (layers.LayerCancelled,), parent)


def sensitivity_job(reference: Path, imatrix: Path | None,
                    parent: QObject | None = None) -> EngineJob:
    """Progress events, then the proxy SensitivityTable of ``reference`` (an F16/BF16/F32
    GGUF), weighted by ``imatrix`` when given (``app.engine.sensitivity.proxy``)."""
    from app.engine import sensitivity

    def run(cancel: Callable[[], bool]) -> Iterator[Any]:
        yield from sensitivity.proxy(reference, imatrix, cancel=cancel)

    return EngineJob(run, (sensitivity.SensitivityCancelled,), parent)
