"""Catalog, bandwidth and recommendations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core import bandwidth, catalog, memory, paths, recommend
from app.core.bandwidth import Bandwidth
from app.core.gguf_info import read_model_info
from app.core.hardware import GIB, BackendDevice, CpuInfo, HardwareProfile, LlamaBuild

GB = 1e9


def _profile(ram: int, gpu: int | None = None, gpu_name: str = "NVIDIA GeForce RTX 4090",
             ) -> HardwareProfile:
    devices = [BackendDevice("CPU", "cpu", "cpu", "CPU", ram, ram)]
    if gpu is not None:
        devices.insert(0, BackendDevice("CUDA0", gpu_name, "gpu", "CUDA", gpu, gpu))
    return HardwareProfile(os="Linux", os_version="6", cpu=CpuInfo("cpu", "x86_64", 8, 16,
                                                                    ("AVX2",)),
                           ram_total=ram, ram_available=ram,
                           llama=LlamaBuild("0.3", ("CPU",), tuple(devices), "", gpu is not None))


def test_catalog_is_complete_and_consistent() -> None:
    models = catalog.load()
    assert len(models) >= 20
    assert len({m.name for m in models}) == len(models)
    sizes = [m.n_params for m in models]
    assert min(sizes) < 200e6 and max(sizes) > 60e9
    for m in models:
        assert m.n_head % m.n_head_kv == 0, m.name
        assert "/" in m.gguf_repo and "/" in m.original_repo, m.name
        info = m.as_model_info("Q4_K_M")
        # the synthetic tensors add up to the parameter count (up to rounding per layer)
        assert abs(sum(t.shape[0] * t.shape[1] for t in info.tensors) - m.n_params) \
            < m.n_layers * m.n_embd + m.n_vocab, m.name


def test_catalog_estimate_of_smollm2_matches_the_real_file(smollm2: Path) -> None:
    entry = next(m for m in catalog.load() if m.name == "SmolLM2-135M-Instruct")
    synthetic = memory.estimate(entry.as_model_info("Q4_1"), 4096).total
    real = memory.estimate(read_model_info(smollm2), 4096).total
    assert abs(synthetic - real) / real < 0.10


def test_malformed_catalog_names_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps({"models": [{"name": "Broken", "n_params": 1}]}))
    with pytest.raises(ValueError, match="Broken"):
        catalog.load(bad)


def test_cpu_only_machine_gets_ram_plans_at_usable_speed() -> None:
    recs = recommend.recommend(_profile(16 * GIB), catalog.load(), Bandwidth(40 * GB, None, "none"))
    assert recs and all(r.plan.fit == "ram" for r in recs)
    assert all(r.tokens_per_second >= recommend.MIN_TOKENS_PER_SECOND for r in recs)
    assert all(r.plan.estimate.total <= 16 * GIB - memory.RAM_RESERVE for r in recs)
    assert sum(r.top_pick for r in recs) == 1
    assert all("fits in your RAM" in r.reason for r in recs)


def test_each_model_gets_its_best_quant_that_fits() -> None:
    profile = _profile(64 * GIB, 24 * GIB)
    bw = Bandwidth(60 * GB, 1008 * GB, "published")
    recs = recommend.recommend(profile, catalog.load(), bw)
    by_model = {r.model.name: r for r in recs}
    qwen32 = by_model["Qwen2.5-32B-Instruct"]
    assert qwen32.plan.fit == "gpu"
    better = recommend.LADDER[recommend.LADDER.index(qwen32.quant) - 1]
    model = qwen32.model
    assert memory.plan(model.as_model_info(better), profile, n_ctx=4096).fit != "gpu"
    assert by_model["SmolLM2-135M-Instruct"].quant == "Q8_0"
    # GPU plans come first, largest model first within a class
    fits = [r.plan.fit for r in recs]
    assert fits == sorted(fits, key=lambda f: recommend._FIT_ORDER[f])
    top = next(r for r in recs if r.top_pick)
    assert top.plan.fit == "gpu" and top.tokens_per_second >= recommend.GOOD_TOKENS_PER_SECOND


def test_tokens_per_second_scales_with_bandwidth() -> None:
    entry = next(m for m in catalog.load() if m.name == "Llama-3.1-8B-Instruct")
    info = entry.as_model_info("Q4_K_M")
    est = memory.estimate(info, 4096)
    slow = recommend.tokens_per_second(info, est, Bandwidth(20 * GB, None, "none"))
    fast = recommend.tokens_per_second(info, est, Bandwidth(40 * GB, None, "none"))
    assert fast == pytest.approx(2 * slow)
    # 8B at Q4_K_M reads about 4.6 GB a token: 20 GB/s at 60% gives about 2.5 tok/s
    assert 2.0 < slow < 3.2


def test_gpu_bandwidth_from_the_published_table_or_assumed() -> None:
    assert bandwidth.gpu_bandwidth(_profile(8 * GIB, 8 * GIB)) == (1008 * GB, "published")
    unknown = bandwidth.gpu_bandwidth(_profile(8 * GIB, 8 * GIB, "Mystery GPU"))
    assert unknown == (bandwidth.ASSUMED_GPU_GBPS * GB, "assumed")
    assert bandwidth.gpu_bandwidth(_profile(8 * GIB)) == (None, "none")


def test_cpu_bandwidth_is_measured_once_and_cached() -> None:
    profile = _profile(8 * GIB)
    first = bandwidth.cpu_bandwidth(profile)
    assert first > 1 * GB  # any machine that runs this copies faster than 1 GB/s
    cached = json.loads((paths.cache_dir() / "bandwidth.json").read_text())
    assert cached["bytes_per_second"] == first
    assert bandwidth.cpu_bandwidth(profile, measure=False) == first
