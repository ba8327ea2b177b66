"""Memory bandwidth of this machine, measured once with a short copy and cached.

Generating a token reads every active weight once, so tokens per second are bounded by memory
bandwidth over bytes per token. The CPU figure is measured (best of a few copies of a 256 MiB
array, counting bytes read and written). GPUs are not measured here (that needs their runtime);
known chips come from a table of published figures, others get a stated assumption.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core import paths
from app.core.atomic import write_text_atomic
from app.core.hardware import HardwareProfile

log = logging.getLogger(__name__)
GB = 1e9

# Published memory bandwidth (GB/s) of common chips, matched by substring of the device name.
KNOWN_GPUS: tuple[tuple[str, float], ...] = (
    ("H200", 4800), ("H100", 3350), ("A100", 1935), ("L40S", 864), ("RTX 5090", 1792),
    ("RTX 4090", 1008), ("RTX 4080", 717), ("RTX 4070 Ti", 504), ("RTX 4070", 504),
    ("RTX 4060 Ti", 288), ("RTX 4060", 272), ("RTX 3090", 936), ("RTX 3080", 760),
    ("RTX 3070", 448), ("RTX 3060", 360), ("RX 7900 XTX", 960), ("RX 7900 XT", 800),
    ("RX 7800 XT", 624), ("RX 6800 XT", 512), ("M4 Max", 546), ("M4 Pro", 273), ("M4", 120),
    ("M3 Max", 400), ("M3 Pro", 150), ("M3", 100), ("M2 Ultra", 800), ("M2 Max", 400),
    ("M2 Pro", 200), ("M2", 100), ("M1 Ultra", 800), ("M1 Max", 400), ("M1 Pro", 200),
    ("M1", 68),
)
ASSUMED_GPU_GBPS = 300.0


@dataclass(frozen=True)
class Bandwidth:
    """Bytes per second of the CPU's memory and of the GPU (and whether that is measured)."""

    cpu: float
    gpu: float | None
    gpu_source: str  # "published", "assumed" or "none"


def measure_cpu(size_mib: int = 256, repeats: int = 5) -> float:
    """Best copy bandwidth (bytes read + written per second) over ``repeats`` copies."""
    src = np.ones(size_mib * 1024 * 1024 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def _cache_path() -> Path:
    return paths.cache_dir() / "bandwidth.json"


def cpu_bandwidth(profile: HardwareProfile, measure: bool = True) -> float:
    """This machine's CPU bandwidth, from the cache or measured now (about a second)."""
    key = f"{profile.cpu.model}|{profile.ram_total}"
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return float(cached["bytes_per_second"])
    except (OSError, ValueError, KeyError):
        pass
    if not measure:
        return 20 * GB
    value = measure_cpu()
    write_text_atomic(path, json.dumps({"key": key, "bytes_per_second": value}))
    log.info("measured CPU memory bandwidth: %.1f GB/s", value / GB)
    return value


def gpu_bandwidth(profile: HardwareProfile) -> tuple[float | None, str]:
    """Published bandwidth of the largest GPU, an assumption when unknown, None without GPU."""
    gpus = sorted(profile.gpus, key=lambda d: d.memory_total or 0, reverse=True)
    chip = profile.apple.chip if profile.apple else None
    names = [chip] if chip else [f"{g.description} {g.name}" for g in gpus[:1]]
    if not gpus:
        return None, "none"
    for known, gbps in KNOWN_GPUS:
        if any(known in name for name in names):
            return gbps * GB, "published"
    return ASSUMED_GPU_GBPS * GB, "assumed"


def bandwidth(profile: HardwareProfile, measure: bool = True) -> Bandwidth:
    """CPU (measured, cached) and GPU (published or assumed) bandwidth."""
    gpu, source = gpu_bandwidth(profile)
    return Bandwidth(cpu_bandwidth(profile, measure), gpu, source)
