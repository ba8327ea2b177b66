"""What it costs to know a model's fit before downloading it: bytes and time to read a GGUF
header over HTTP Range requests and plan it, from the local hub server.

Two models: the embedded SmolLM2-135M-Instruct (a 49k-token BPE vocabulary with its merges)
and a synthetic header with a 150k-token vocabulary and as many merges (Qwen-sized). Each is
read cold (nothing cached: the first range, then larger ones until the header is whole), then
again in a fresh process's memory (the header from the cache folder: only the HEAD request) and
with the memory cache. 'same' checks the plan against the one made from the local file.

    .venv/bin/python -m bench.remote_fit
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.core import memory
from app.core.embedded import embedded_model_path
from app.core.gguf_info import read_model_info
from app.core.hardware import GIB, BackendDevice, CpuInfo, HardwareProfile, LlamaBuild
from app.core.units import format_bytes
from app.hub import remote_header
from app.hub.remote_fit import remote_fit
from tests.helpers.fake_hub import FakeHub
from tests.helpers.header_models import write_header_model

REPEATS = 5
PROFILE = HardwareProfile(
    os="Linux", os_version="6", cpu=CpuInfo("cpu", "x86_64", 8, 16, ("AVX2",)),
    ram_total=32 * GIB, ram_available=32 * GIB,
    llama=LlamaBuild("0.3", ("CPU",), (BackendDevice("CPU", "cpu", "cpu", "CPU", 32 * GIB,
                                                     32 * GIB),), "", False))


@dataclass(frozen=True)
class Row:
    model: str
    size: int
    header: int  # where the tensor data starts
    read: int  # bytes fetched, cold
    requests: int
    cold: float
    disk: float
    warm: float
    same: bool  # the plan equals the one from the local file


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench(hub: FakeHub, repo: str, local: Path) -> Row:
    """Read ``local`` (served by ``hub`` as repo/name) cold, from disk cache and from memory."""
    expected = memory.plan(read_model_info(local), PROFILE, n_ctx=4096)
    header_end = min(t.offset for t in read_model_info(local).tensors)
    cold, disk, warm = [], [], []
    fit = None
    for _ in range(REPEATS):
        for cached in (Path(os.environ["QUANTDESK_HOME"]) / "cache" / "gguf-headers").glob("*"):
            cached.unlink()
        remote_header.forget_cache()
        start = time.perf_counter()
        fit = remote_fit(repo, [local.name], PROFILE, n_ctx=4096, endpoint=hub.endpoint)
        cold.append(time.perf_counter() - start)
        remote_header.forget_cache()
        start = time.perf_counter()
        remote_fit(repo, [local.name], PROFILE, n_ctx=4096, endpoint=hub.endpoint)
        disk.append(time.perf_counter() - start)
        start = time.perf_counter()
        remote_fit(repo, [local.name], PROFILE, n_ctx=4096, endpoint=hub.endpoint)
        warm.append(time.perf_counter() - start)
    assert fit is not None and fit.header is not None and fit.plan is not None
    return Row(local.name, local.stat().st_size, header_end, fit.header.bytes_read,
               fit.header.requests, _median(cold), _median(disk), _median(warm),
               fit.plan.estimate == expected.estimate)


def main() -> None:
    """Print the table."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["QUANTDESK_HOME"] = str(Path(tmp) / "home")
        smol = embedded_model_path()
        assert smol is not None, "the embedded model is not installed"
        synthetic = write_header_model(Path(tmp) / "Synthetic-150k-F16.gguf", n_vocab=150_000,
                                       weight_bytes=64 * 2**20, n_layer=4, n_embd=256)
        hub = FakeHub()
        hub.add("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", smol.name, smol.read_bytes())
        hub.add("org/Synthetic-GGUF", synthetic.name, synthetic.read_bytes())
        hub.start()
        try:
            rows = [bench(hub, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", smol),
                    bench(hub, "org/Synthetic-GGUF", synthetic)]
        finally:
            hub.stop()
    print(f"{'model':<38} {'file':>10} {'header':>10} {'read':>10} {'GETs':>4} "
          f"{'of file':>7} {'cold':>8} {'disk':>8} {'memory':>8}  same")
    for r in rows:
        print(f"{r.model:<38} {format_bytes(r.size):>10} {format_bytes(r.header):>10} "
              f"{format_bytes(r.read):>10} {r.requests:>4} {r.read / r.size:>7.1%} "
              f"{r.cold * 1000:>6.0f}ms {r.disk * 1000:>6.0f}ms {r.warm * 1000:>6.0f}ms  "
              f"{r.same}")
    print(f"median of {REPEATS}; cold: nothing cached; disk: a new process (cache folder); "
          "memory: the same process. Every row makes one HEAD request besides its GETs.")


if __name__ == "__main__":
    main()
