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
    assert all("Fits in your RAM" in r.reason for r in recs)


# --- the reasons: each is checked against a second computation of the constraint it names ---

_TABLE = json.loads((Path(recommend.__file__).parents[2] / "resources" /
                     "expected_quality.json").read_text())


def _expected_kld(quant: str, n_params: int) -> float:
    """The table's figure for ``quant``, from the source nearest in size (read from the JSON
    here, not through the module under test)."""
    import math

    figures = _TABLE["types"][quant]
    source = min(figures, key=lambda s: abs(math.log(n_params / _TABLE["sources"][s]["n_params"])))
    return float(figures[source].get("kld", figures[source].get("imatrix_kld")))


def _next_better(rec: recommend.Recommendation) -> str | None:
    """The quantization ranked just above the chosen one by expected KLD."""
    order = sorted(recommend.LADDER, key=lambda q: _expected_kld(q, rec.model.n_params))
    i = order.index(rec.quant)
    return order[i - 1] if i else None


def _check_reasons(recs: list[recommend.Recommendation], profile: HardwareProfile,
                   bw: Bandwidth, min_tps: float = recommend.MIN_TOKENS_PER_SECOND) -> set[str]:
    """Every reason names the constraint that really ruled out the next better quantization,
    with its numbers; returns the constraints seen."""
    ram = profile.ram_available - memory.RAM_RESERVE
    seen = set()
    for r in recs:
        better = _next_better(r)
        assert r.reason.startswith(f"{r.quant}: "), r.reason
        if better is None:
            assert r.constraint == "none" and "the highest quality offered" in r.reason
            continue
        info = r.model.as_model_info(better)
        plan = memory.plan(info, profile, n_ctx=r.plan.n_ctx)
        if plan.fit == "too_large":
            assert r.constraint == "memory", r.reason
            need = plan.estimate.total if plan.estimate.gpu else plan.estimate.cpu.total
            assert f"{better} would need {need / GIB:.1f} GiB" in r.reason
            if plan.estimate.gpu is None:
                assert f"{ram / GIB:.1f} GiB free for models" in r.reason
        else:
            tps = recommend.tokens_per_second(info, plan.estimate, bw)
            assert tps < min_tps
            assert r.constraint == "speed", r.reason
            shown = f"~{tps:.1f} tok/s" if tps < 10 else f"~{tps:.0f} tok/s"
            assert f"{better} would run at {shown}, under your {min_tps:g} tok/s target" \
                in r.reason
        seen.add(r.constraint)
    return seen


def test_memory_bound_reasons_name_the_memory_the_better_quant_needs() -> None:
    profile, bw = _profile(8 * GIB), Bandwidth(200 * GB, None, "none")
    recs = recommend.recommend(profile, catalog.load(), bw)
    assert "memory" in _check_reasons(recs, profile, bw)
    llama = next(r for r in recs if r.model.name == "Llama-3.1-8B-Instruct")
    assert llama.constraint == "memory" and "Fits in your RAM" in llama.reason


def test_speed_bound_reasons_name_the_speed_target() -> None:
    """The issue's case: on a 24 GiB machine Phi-3.5-mini's Q8_0 fits easily; what keeps it
    out is the speed target, and the reason says so."""
    profile, bw = _profile(24 * GIB), Bandwidth(20 * GB, None, "none")
    recs = recommend.recommend(profile, catalog.load(), bw)
    assert "speed" in _check_reasons(recs, profile, bw)
    phi = next(r for r in recs if r.model.name == "Phi-3.5-mini-instruct")
    assert phi.constraint == "speed" and "would need" not in phi.reason
    q8 = memory.plan(phi.model.as_model_info("Q8_0"), profile, n_ctx=4096)
    assert q8.fit == "ram"  # it fits: memory is not why
    # a lower target lets the better quantization through
    slower = recommend.recommend_model(phi.model, profile, bw, min_tps=2.0)
    assert slower is not None and slower.quant == "Q8_0" and slower.constraint == "none"


def test_gpu_reasons_and_split_plans() -> None:
    profile = _profile(64 * GIB, 24 * GIB)
    bw = Bandwidth(60 * GB, 1008 * GB, "published")
    recs = recommend.recommend(profile, catalog.load(), bw)
    _check_reasons(recs, profile, bw)
    by_model = {r.model.name: r for r in recs}
    assert by_model["SmolLM2-135M-Instruct"].quant == "Q8_0"
    assert "Fits on your GPU" in by_model["SmolLM2-135M-Instruct"].reason
    split = [r for r in recs if r.plan.fit == "partial"]
    assert split and all("Runs split" in r.reason and "layers on your GPU" in r.reason
                         for r in split)
    # GPU plans come first, largest model first within a class
    fits = [r.plan.fit for r in recs]
    assert fits == sorted(fits, key=lambda f: recommend._FIT_ORDER[f])
    top = next(r for r in recs if r.top_pick)
    assert top.plan.fit == "gpu" and top.tokens_per_second >= recommend.GOOD_TOKENS_PER_SECOND


def _evaluation(kld_by_quant: dict[str, float]) -> dict[str, object]:
    from dataclasses import asdict

    from app.engine.evaluate import Evaluation, Quality, VariantResult

    def variant(quant: str, kld: float | None, reference: bool = False) -> VariantResult:
        return VariantResult(path=f"/m/SmolLM2-135M-Instruct-{quant}.gguf",
                             name=f"SmolLM2-135M-Instruct-{quant}", quant=quant, size=1,
                             bits_per_weight=8.0, fingerprint="x", load_seconds=0.1, peak_rss=1,
                             quality=Quality(ppl=10.0, ppl_error=0.1, kld_mean=kld),
                             speed=None, is_reference=reference)

    evaluation = Evaluation(variant("F16", None, True),
                            tuple(variant(q, k) for q, k in kld_by_quant.items()),
                            "text", "sha", 512, 4, "build")
    assert asdict(evaluation)  # a real Evaluation, stored the way the app stores it
    return evaluation.to_json()


def test_the_users_measurements_replace_the_table(tmp_path: Path) -> None:
    from app.core.storage import Storage

    store = Storage(tmp_path / "db.sqlite3")
    try:
        store.add_evaluation("older", _evaluation({"Q8_0": 0.9}))
        newest = store.add_evaluation("wizard", _evaluation({"Q8_0": 0.3, "Q6_K": 0.002}))
        store.add_evaluation("not an evaluation", {"something": "else"})
        models = catalog.load()
        measured = recommend.measured_quality(store.evaluations(), models)
    finally:
        store.close()
    smol = next(m for m in models if m.name == "SmolLM2-135M-Instruct")
    assert measured[(smol.name, "Q8_0")].kld == 0.3  # the newest evaluation wins
    assert measured[(smol.name, "Q8_0")].source.startswith(f"your evaluation #{newest}")
    profile, bw = _profile(16 * GIB), Bandwidth(40 * GB, None, "none")
    plain = recommend.recommend_model(smol, profile, bw)
    assert plain is not None and plain.quant == "Q8_0" and not plain.quality.measured
    mine = recommend.recommend_model(smol, profile, bw, measured=measured)
    # Q8_0 measured worse than Q6_K here: Q6_K ranks first, with the user's number
    assert mine is not None and mine.quant == "Q6_K" and mine.constraint == "none"
    assert mine.quality is not None and mine.quality.measured and mine.quality.kld == 0.002
    assert "measured KLD 0.002 (your evaluation" in mine.reason


def test_file_names_match_their_catalog_model() -> None:
    models = catalog.load()

    def name(file: str) -> str | None:
        found = recommend.match_model(file, models)
        return found.name if found else None

    assert name("Meta-Llama-3.1-8B-Instruct-Q4_K_M") == "Llama-3.1-8B-Instruct"
    assert name("qwen2.5-14b-instruct-q5_k_m-00001-of-00002") == "Qwen2.5-14B-Instruct"
    assert name("qwen2.5-1.5b-instruct-q8_0") == "Qwen2.5-1.5B-Instruct"
    assert name("SmolLM2-135M-Instruct.Q4_1") == "SmolLM2-135M-Instruct"
    assert name("gemma-3-12b-it-Q4_K_M") == "gemma-3-12b-it"
    assert name("tiny-llama-f32") is None


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
