"""The child-process runner with a spare child kept warm: the task runs in the spare, sees the
parent's current environment, and crashes and cancels still end only that task."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine import child
from tests.helpers import child_tasks


@pytest.fixture
def warm() -> Iterator[None]:
    child.keep_warm(("json",))
    assert child.wait_warm()
    yield
    child.stop_warm()


def _spare_pid() -> int:
    spare = child._SPARES.spare
    assert spare is not None
    return spare.proc.pid  # type: ignore[return-value]


def test_task_runs_in_the_spare_with_the_parents_environment_of_now(
        warm: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spare = _spare_pid()
    monkeypatch.setenv("QUANTDESK_CHILD_TEST", "set after the spare started")
    monkeypatch.chdir(tmp_path)

    pid, value, cwd = child.call_in_child(child_tasks.pid_env_cwd, "QUANTDESK_CHILD_TEST")

    assert pid == spare
    assert value == "set after the spare started"
    assert Path(cwd) == tmp_path
    assert child.wait_warm()  # a new spare replaces the used one
    assert _spare_pid() not in (spare, os.getpid())


def test_spare_has_its_modules_imported(warm: None) -> None:
    assert child.call_in_child(child_tasks.imported, "json")


def test_a_task_that_kills_its_process_is_a_crash_and_the_next_task_still_runs(warm: None) -> None:
    with pytest.raises(child.ChildCrashed, match="SIGKILL"):
        child.call_in_child(child_tasks.die)
    assert child.wait_warm()
    assert child.call_in_child(child_tasks.imported, "json")


def test_cancel_kills_the_spare_running_the_stream(warm: None) -> None:
    spare = child._SPARES.spare
    assert spare is not None
    seen: list[int] = []
    with pytest.raises(child.ChildCancelled):
        for value in child.stream_from_child(child_tasks.count_forever,
                                             cancel=lambda: len(seen) >= 3):
            seen.append(value)
    assert seen == [0, 1, 2]
    assert not spare.proc.is_alive()


def test_without_keep_warm_each_task_spawns_its_own_child() -> None:
    child.stop_warm()
    assert not child.wait_warm(0)
    first, _, _ = child.call_in_child(child_tasks.pid_env_cwd, "HOME")
    second, _, _ = child.call_in_child(child_tasks.pid_env_cwd, "HOME")
    assert first != second != os.getpid()
    assert not child.wait_warm(0)
