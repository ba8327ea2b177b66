"""Downloads that are killed, resumed and run out of disk, with real child processes.

A spawned child runs ``app.hub.download.download_files`` with the real huggingface-hub client
against the local hub server and is SIGKILLed at random points (set QUANTDESK_KILL_SEED to
replay a run; the seed is in every failure message). After every kill: a finished file is never
wrong and the library offers nothing unfinished as a model; at the end every file's SHA-256 is
right and no finished file, and no byte already on disk, was fetched again. The long version
is bench/download_kills.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.library import SOURCE_APP, Library
from tests.helpers.download_kills import KillCycles, library_problems, run_child, sha256
from tests.helpers.fake_hub import FakeHub
from tests.helpers.split_model import split_model_parts

REPO = "org/killed-GGUF"
SEED = int(os.environ.get("QUANTDESK_KILL_SEED") or time.time_ns() % 2**32)
MiB = 1024 * 1024


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub()
    h.delay = 0.004  # 64 KiB per 4 ms: a few hundred ms per file, time to kill it anywhere
    h.start()
    yield h
    h.stop()


def _serve(hub: FakeHub, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        hub.add(REPO, name, data)


def _app_entries() -> list[Path]:
    return [e.path for e in Library().scan() if e.source == SOURCE_APP and e.info is not None]


def test_single_file_survives_random_kills(hub: FakeHub, quantdesk_home: Path) -> None:
    files = split_model_parts("model-Q8_0", 1, 3 * MiB + 12345, seed=SEED)
    _serve(hub, files)
    tally = KillCycles(hub, REPO, files, quantdesk_home, SEED).run(kills=3)
    assert tally.failures == [], f"seed {SEED}"
    assert tally.cycles >= 2, f"fewer than two runs were killed (seed {SEED})"
    assert (tally.verified, tally.parts_refetched, tally.bytes_refetched) == (1, 0, 0)
    assert [p.name for p in _app_entries()] == ["model-Q8_0.gguf"]


def test_split_model_survives_random_kills(hub: FakeHub, quantdesk_home: Path) -> None:
    files = split_model_parts("model-Q4_K_M", 3, 1536 * 1024 + 777, seed=SEED)
    _serve(hub, files)
    tally = KillCycles(hub, REPO, files, quantdesk_home, SEED).run(kills=4)
    assert tally.failures == [], f"seed {SEED}"
    assert tally.cycles >= 3, f"fewer than three runs were killed (seed {SEED})"
    assert (tally.verified, tally.parts_refetched, tally.bytes_refetched) == (3, 0, 0)
    assert [p.name for p in _app_entries()] == ["model-Q4_K_M-00001-of-00003.gguf"]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_disk_full_mid_download_is_clear_keeps_nothing_as_a_model_and_recovers(
        hub: FakeHub, quantdesk_home: Path) -> None:
    """The child may write no file past 2 MiB (RLIMIT_FSIZE: the kernel fails the write, as
    on a full disk); the second of three parts is 3 MiB."""
    hub.delay = 0.0
    files = split_model_parts("model-Q6_K", 3, [MiB, 3 * MiB, MiB])
    _serve(hub, files)
    first, second, third = sorted(files)
    folder = quantdesk_home / "models" / REPO

    outcome, message = run_child(hub, quantdesk_home, REPO, sorted(files),
                                 file_size_limit=2 * MiB)
    assert outcome == "DiskFull", message
    assert f"Writing {second} failed" in message and "Free some space" in message
    assert "kept" in message
    assert sha256((folder / first).read_bytes()) == sha256(files[first])
    kept = (folder / (second + ".part")).stat().st_size
    assert 0 < kept <= 2 * MiB
    assert not (folder / second).exists() and not (folder / third).exists()
    assert _app_entries() == [] and library_problems(files, folder) == []

    outcome, message = run_child(hub, quantdesk_home, REPO, sorted(files))
    assert outcome == "ok", message
    for name, data in files.items():
        assert sha256((folder / name).read_bytes()) == sha256(data)
    assert [r.start for r in hub.gets(REPO, first)] == [0]  # not fetched again
    assert [r.start for r in hub.gets(REPO, second)] == [0, kept]  # resumed where it stopped
    assert [r.start for r in hub.gets(REPO, third)] == [0]
    assert [p.name for p in _app_entries()] == [first]
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # no part left behind
