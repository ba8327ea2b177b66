"""Estimated against measured memory, per load: kept in the database, summarized per machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import load_stats, memory
from app.core.gguf_info import read_model_info
from app.core.storage import SCHEMA_VERSION, Storage
from app.engine.host import ModelHost
from app.engine.probe import full_profile
from app.engine.protocol import LoadSettings

MIB = 2**20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    s = Storage(tmp_path / "db.sqlite3")
    yield s
    s.close()


def test_a_real_load_is_recorded_and_its_estimate_is_close(store: Storage, smollm2: Path) -> None:
    """SmolLM2 loaded in the engine child: what the chat records after a load."""
    features = full_profile().repacking_features
    host = ModelHost()
    try:
        loaded = host.load_sync(LoadSettings(str(smollm2), n_ctx=4096))
    finally:
        host.shutdown()
    record = load_stats.record_loaded_model(
        store, smollm2, n_ctx=loaded.n_ctx, n_gpu_layers=loaded.n_gpu_layers,
        measured_rss=loaded.rss_bytes - loaded.rss_before_bytes, measured_gpu=loaded.gpu_bytes,
        cpu_features=features)
    expected = memory.estimate(read_model_info(smollm2), 4096, 0, cpu_features=features)
    assert record.estimated_rss == expected.cpu.total - expected.cpu.compute
    assert record.measured_rss == loaded.rss_bytes - loaded.rss_before_bytes
    # the resident part of the estimate is within 10% of what loading measured
    assert abs(record.rss_error) < 0.10, record.text()
    assert load_stats.last_loads(store) == {str(smollm2): record}
    assert record.text().startswith("RAM: estimated ")


def _estimate(cpu: int, compute: int = 0, gpu: int | None = None) -> memory.MemoryEstimate:
    return memory.MemoryEstimate(
        n_ctx=4096, n_gpu_layers=0 if gpu is None else 10, n_layers=30,
        cpu=memory.DeviceUse("CPU", weights=cpu - compute, compute=compute),
        gpu=None if gpu is None else memory.DeviceUse("GPU", weights=gpu))


def test_the_summary_says_how_far_off_the_estimates_were(store: Storage) -> None:
    assert "No model has been loaded" in load_stats.error_summary(store).sentence()
    # estimated resident 100, 100, 100 MiB (the compute buffers are left out) against
    # measured 98, 103 and 100 MiB: errors +2.0%, -2.9%, 0%
    load_stats.record_load(store, "/m/a.gguf", _estimate(150 * MIB, 50 * MIB), 98 * MIB)
    load_stats.record_load(store, "/m/b.gguf", _estimate(100 * MIB), 103 * MIB)
    last = load_stats.record_load(store, "/m/a.gguf", _estimate(100 * MIB, gpu=200 * MIB),
                                  100 * MIB, 190 * MIB)
    summary = load_stats.error_summary(store)
    assert summary.loads == 3 and summary.gpu_loads == 1
    assert summary.rss_within == pytest.approx(3 / 103)
    assert summary.gpu_within == pytest.approx(10 / 190)
    assert summary.sentence() == ("Memory estimates here have been within 3% of the measured "
                                  "RAM over 3 loads (GPU memory: within 6% over 1); on average "
                                  "0.3% low.")
    latest = load_stats.last_loads(store)
    assert latest["/m/a.gguf"] == last and latest["/m/b.gguf"].measured_rss == 103 * MIB
    assert last.gpu_error == pytest.approx(10 / 190)


def test_the_loads_table_is_a_migration_of_existing_databases(tmp_path: Path) -> None:
    import sqlite3

    from app.core.storage import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:-1]:
        db.executescript(step)
    db.execute("INSERT INTO evaluations (title, result_json, created_at) VALUES ('e', '{}', 0)")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    db.commit()
    db.close()
    store = Storage(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert [e.title for e in store.evaluations()] == ["e"]  # nothing lost
        load_stats.record_load(store, "/m/x.gguf", _estimate(10 * MIB), 10 * MIB)
        assert len(load_stats.recent_loads(store)) == 1
    finally:
        store.close()


def test_background_reads_at_once_on_a_new_database_all_work(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Pages read the database from worker threads, each with its own connection; on a new
    database they may all start at the same moment (every one runs the migrations)."""
    import threading

    from app.core import paths, store_reads

    errors: list[Exception] = []
    start = threading.Barrier(4)

    def read_at_once() -> None:
        start.wait()
        try:
            store_reads.read(load_stats.recent_loads)
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)

    for attempt in range(5):
        monkeypatch.setenv("QUANTDESK_HOME", str(tmp_path / f"home-{attempt}"))
        threads = [threading.Thread(target=read_at_once) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert paths.database_path().exists()
    assert errors == []
