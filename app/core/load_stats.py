"""The memory estimate against reality: every model load's estimate and measurement, kept.

After a model loads, the chat records what ``app.core.memory`` estimated for that load (same
context, same GPU layers, this CPU's repacking) and what the engine child measured: its RSS
growth over the bare engine (``Loaded.rss_bytes - Loaded.rss_before_bytes``) and, on a GPU, the
device memory it took. The Models page shows each model's last figure; the Hardware page how
far off the estimator has been on this machine.

What is compared on the CPU is the part of the estimate that is resident once loading ends:
everything but the compute buffers. llama.cpp allocates those at load, but the OS maps them
lazily and they become resident only as a prompt long enough to need them is processed (a
full-context prompt measures them too: ``bench/memory.py``). On a GPU the reservation is
allocated whole, so the device figure is compared with the whole GPU estimate.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from app.core import memory
from app.core.gguf_info import ModelInfo, read_model_info
from app.core.storage import Storage
from app.core.units import format_bytes


@dataclass(frozen=True)
class LoadRecord:
    """One load: what was estimated and what was measured (bytes)."""

    id: int
    model_path: str
    n_ctx: int
    n_gpu_layers: int
    estimated_rss: int
    measured_rss: int
    estimated_gpu: int | None
    measured_gpu: int | None
    created_at: float

    @property
    def rss_error(self) -> float:
        """(estimated - measured) / measured: positive when the estimate was high."""
        return _error(self.estimated_rss, self.measured_rss)

    @property
    def gpu_error(self) -> float | None:
        """The same for device memory; None without a GPU figure."""
        if self.estimated_gpu is None or self.measured_gpu is None:
            return None
        return _error(self.estimated_gpu, self.measured_gpu)

    def text(self) -> str:
        """'RAM: estimated 151.0 MiB, measured 159.5 MiB (-5%)' (and the GPU's, if any)."""
        parts = [f"RAM: estimated {format_bytes(self.estimated_rss)}, measured "
                 f"{format_bytes(self.measured_rss)} ({self.rss_error:+.0%})"]
        gpu_error = self.gpu_error
        if gpu_error is not None:
            parts.append(f"GPU: estimated {format_bytes(self.estimated_gpu)}, measured "
                         f"{format_bytes(self.measured_gpu)} ({gpu_error:+.0%})")
        return "; ".join(parts)


def _error(estimated: int, measured: int) -> float:
    return (estimated - measured) / measured if measured > 0 else math.inf


def resident_estimate(estimate: memory.MemoryEstimate) -> int:
    """The part of the CPU estimate that is resident once a load ends (see the module's
    docstring): everything but the compute buffers."""
    return estimate.cpu.total - estimate.cpu.compute


def record_load(store: Storage, model_path: str | Path, estimate: memory.MemoryEstimate,
                measured_rss: int, measured_gpu: int | None = None) -> LoadRecord:
    """Keep one load's ``estimate`` against the engine's measurement; returns the record."""
    record = LoadRecord(
        0, str(model_path), estimate.n_ctx, estimate.n_gpu_layers, resident_estimate(estimate),
        int(measured_rss), estimate.gpu.total if estimate.gpu is not None else None,
        None if measured_gpu is None else int(measured_gpu), time.time())
    with store.transaction() as db:
        cur = db.execute(
            "INSERT INTO loads (model_path, n_ctx, n_gpu_layers, estimated_rss, measured_rss, "
            "estimated_gpu, measured_gpu, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.model_path, record.n_ctx, record.n_gpu_layers, record.estimated_rss,
             record.measured_rss, record.estimated_gpu, record.measured_gpu, record.created_at))
    return dataclasses.replace(record, id=int(cur.lastrowid or 0))


def record_loaded_model(store: Storage, model_path: str | Path, *, n_ctx: int, n_gpu_layers: int,
                        measured_rss: int, measured_gpu: int | None = None,
                        cpu_features: tuple[str, ...] = (), kv_type: str | None = None,
                        flash_attn: bool | None = None, n_seq: int = 1,
                        info: ModelInfo | None = None) -> LoadRecord:
    """Estimate the load that was just made (the model's header is read unless ``info`` is
    given) and record it against the measurement. ``cpu_features``: the profile's
    ``repacking_features``; ``kv_type``: the load's KV cache type (None: F16); ``flash_attn``:
    the load's setting (None: auto, ``memory.flash_attention``); ``n_seq``: its parallel
    sequences (``Loaded.n_parallel``). Reads the disk
    and writes the database: call it off the UI thread. Raises GGUFError when the model cannot
    be read."""
    info = info or read_model_info(model_path)
    estimate = memory.estimate(info, n_ctx, n_gpu_layers, cpu_features=cpu_features,
                               kv_type=kv_type or "f16", flash_attn=flash_attn, n_seq=n_seq)
    return record_load(store, model_path, estimate, measured_rss, measured_gpu)


def _record(row: sqlite3.Row) -> LoadRecord:
    return LoadRecord(row["id"], row["model_path"], row["n_ctx"], row["n_gpu_layers"],
                      row["estimated_rss"], row["measured_rss"], row["estimated_gpu"],
                      row["measured_gpu"], row["created_at"])


def last_loads(store: Storage) -> dict[str, LoadRecord]:
    """Each model's latest load, by model path."""
    rows = store.query("SELECT * FROM loads WHERE id IN "
                       "(SELECT MAX(id) FROM loads GROUP BY model_path)")
    return {row["model_path"]: _record(row) for row in rows}


def recent_loads(store: Storage, limit: int = 100) -> list[LoadRecord]:
    """The latest ``limit`` loads, newest first."""
    rows = store.query("SELECT * FROM loads ORDER BY id DESC LIMIT ?", (limit,))
    return [_record(row) for row in rows]


@dataclass(frozen=True)
class ErrorSummary:
    """How far the estimates have been from the measurements over recent loads."""

    loads: int
    rss_within: float  # the largest |error| over the loads
    rss_mean: float  # mean signed error: above 0, the estimates run high
    gpu_loads: int
    gpu_within: float | None

    def sentence(self) -> str:
        """'Estimates here have been within 3% over 12 loads.'"""
        if not self.loads:
            return ("No model has been loaded here yet: once one is, its estimated and measured "
                    "memory are compared.")
        text = (f"Memory estimates here have been within {math.ceil(self.rss_within * 100):.0f}% "
                f"of the measured RAM over {self.loads} load{'s' if self.loads != 1 else ''}")
        if self.gpu_within is not None:
            text += (f" (GPU memory: within {math.ceil(self.gpu_within * 100):.0f}% over "
                     f"{self.gpu_loads})")
        lean = "high" if self.rss_mean > 0 else "low"
        return text + f"; on average {abs(self.rss_mean):.1%} {lean}."


def error_summary(store: Storage, limit: int = 100) -> ErrorSummary:
    """The estimator's error over the latest ``limit`` loads on this machine."""
    loads = [r for r in recent_loads(store, limit) if r.measured_rss > 0]
    if not loads:
        return ErrorSummary(0, 0.0, 0.0, 0, None)
    errors = [r.rss_error for r in loads]
    gpu = [e for r in loads if (e := r.gpu_error) is not None]
    return ErrorSummary(len(loads), max(abs(e) for e in errors), sum(errors) / len(errors),
                        len(gpu), max((abs(e) for e in gpu), default=None))
