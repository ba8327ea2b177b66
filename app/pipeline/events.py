"""What a pipeline run tells its driver (the CLI, or the UI through ``app.jobs``): typed events.

A run yields, in order: for each step ``StepStarted``, then ``StepProgress`` (with an ETA once
there is a rate to extrapolate) and ``StepNote`` (warnings worth showing), then ``StepFinished``
(``reused`` when an earlier identical step's outputs stood in for it) or ``StepFailed``; after
each of these a ``RunProgress`` for the whole run; finally ``RunFinished``. Failures and cancel
also raise ``PipelineError`` / ``PipelineCancelled`` after their event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PipelineError(Exception):
    """A run could not go on; the message says why and what to do."""


class PipelineCancelled(PipelineError):
    """The user cancelled; the step's partial output was removed."""


@dataclass(frozen=True)
class StepStarted:
    run_id: int
    index: int
    total: int
    key: str
    label: str


@dataclass(frozen=True)
class StepProgress:
    run_id: int
    index: int
    key: str
    done: int
    total: int  # 0: unknown
    message: str
    eta_seconds: float | None = None


@dataclass(frozen=True)
class StepNote:
    """Something the user should know that does not stop the step."""

    run_id: int
    key: str
    message: str


@dataclass(frozen=True)
class StepFinished:
    run_id: int
    index: int
    key: str
    label: str
    outputs: dict[str, Any]
    seconds: float
    reused: bool = False


@dataclass(frozen=True)
class StepFailed:
    run_id: int
    index: int
    key: str
    label: str
    message: str
    cancelled: bool = False


@dataclass(frozen=True)
class RunProgress:
    """The whole run: ``fraction`` of the predicted work done, and the time left."""

    run_id: int
    fraction: float
    eta_seconds: float | None
    steps_done: int
    steps_total: int


@dataclass(frozen=True)
class RunFinished:
    """Every step is done; ``outputs`` holds each step's outputs by key."""

    run_id: int
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


Event = StepStarted | StepProgress | StepNote | StepFinished | StepFailed | RunProgress | \
    RunFinished
