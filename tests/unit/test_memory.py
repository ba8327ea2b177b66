"""Memory estimate: llama.cpp's allocation rules, the offload split, and the plan in words."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.core.gguf_info import ModelInfo, read_model_info
from app.core.hardware import GIB, BackendDevice, CpuInfo, HardwareProfile, LlamaBuild
from app.core.memory import MIB, estimate, plan, plan_pair, repack_types
from app.engine.child import call_in_child
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling
from tests.helpers.quantize import quantize

AVX2 = ("AVX", "AVX2", "FMA")


@pytest.fixture(scope="module")
def smol(smollm2: Path) -> ModelInfo:
    return read_model_info(smollm2)


@pytest.fixture(scope="module")
def tiny_q4_k_m(tiny_model_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    out = tmp_path_factory.mktemp("q") / "tiny-q4_k_m.gguf"
    assert call_in_child(quantize, str(tiny_model_f16), str(out), 15) == 0
    return read_model_info(out)


def test_kv_cache_follows_the_formula_and_pads_to_256(smol: ModelInfo) -> None:
    per_cell = 30 * 3 * (64 + 64) * 2  # layers x kv heads x (k + v dims) x f16
    assert estimate(smol, 512).cpu.kv_cache == 512 * per_cell
    assert estimate(smol, 500).cpu.kv_cache == 512 * per_cell
    assert estimate(smol, 513).cpu.kv_cache == 768 * per_cell
    assert estimate(smol, 512, kv_type="q8_0").cpu.kv_cache == 512 * per_cell * 34 // 64


def test_cpu_only_holds_every_weight(smol: ModelInfo) -> None:
    est = estimate(smol, 2048)
    assert est.gpu is None and est.n_gpu_layers == 0
    assert est.cpu.weights == smol.tensor_bytes
    assert est.cpu.repacked == 0  # Q4_1 is not repacked


def test_offload_moves_the_last_layers_then_the_output(smol: ModelInfo) -> None:
    def layer_bytes(layers: range) -> int:
        return sum(t.n_bytes for t in smol.tensors if t.layer in layers)

    part = estimate(smol, 1024, 10)
    assert part.gpu is not None
    assert part.gpu.weights == layer_bytes(range(20, 30))
    assert part.cpu.weights + part.gpu.weights == smol.tensor_bytes
    assert part.gpu.kv_cache == estimate(smol, 1024).cpu.kv_cache // 3

    all_blocks = estimate(smol, 1024, 30)
    full = estimate(smol, 1024, -1)
    assert full.n_gpu_layers == 31
    # Going from 30 to all moves the output layer (here just output_norm: SmolLM2 ties its
    # output to the token embeddings, which always stay on the CPU).
    assert full.gpu is not None and all_blocks.gpu is not None
    assert full.gpu.weights - all_blocks.gpu.weights == 576 * 4
    assert full.cpu.weights == next(t.n_bytes for t in smol.tensors
                                    if t.name == "token_embd.weight")
    assert full.cpu.kv_cache == 0


def test_repacked_weights_count_twice_on_avx2(tiny_q4_k_m: ModelInfo) -> None:
    q4k = sum(t.n_bytes for t in tiny_q4_k_m.tensors
              if t.type_name == "Q4_K" and t.name != "token_embd.weight")
    assert q4k > 0
    assert estimate(tiny_q4_k_m, 512, cpu_features=AVX2).cpu.repacked == q4k
    assert estimate(tiny_q4_k_m, 512, cpu_features=("AVX",)).cpu.repacked == 0


def test_repack_rules_by_cpu() -> None:
    assert repack_types(("AVX2",)) == {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"}
    assert "Q2_K" in repack_types(("AVX2", "AVX512F"))
    assert "Q6_K" in repack_types(("NEON", "DOTPROD"))
    assert "Q8_0" in repack_types(("NEON", "DOTPROD", "I8MM"))
    assert repack_types(("SSE3",)) == set()


def test_a_build_with_amx_plans_without_repacking(tiny_q4_k_m: ModelInfo) -> None:
    """Builds with AMX are loaded without extra buffer types (app.engine.load_params): the
    plan must then count no repacked copy, while the same CPU with a build without AMX does."""
    amx = replace(_profile(16 * GIB), llama=LlamaBuild(
        "0.3", ("CPU",), (), "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1", False))
    plain = replace(amx, llama=replace(amx.llama, system_info="CPU : AVX2 = 1 | REPACK = 1"))
    assert amx.repacking_features == () and plain.repacking_features == AVX2
    assert plan(tiny_q4_k_m, amx, n_ctx=512).estimate.cpu.repacked == 0
    assert plan(tiny_q4_k_m, plain, n_ctx=512).estimate.cpu.repacked > 0


def test_the_engine_loads_without_extra_buffers_exactly_on_amx_builds() -> None:
    import llama_cpp

    from app.core.hardware import extra_buffers_safe
    from app.engine import load_params

    info = llama_cpp.llama_print_system_info().decode()
    params = load_params.model_params()
    assert bool(params.use_extra_bufts) == extra_buffers_safe(info) == ("AMX_INT8 = 1" not in info)


def test_sliding_window_layers_keep_only_their_window(tiny_model: Path) -> None:
    info = read_model_info(tiny_model)
    swa = replace(info, sliding_window=256, sliding_window_pattern=2)
    full = estimate(info, 2048, n_ubatch=256).cpu.kv_cache
    windowed = estimate(swa, 2048, n_ubatch=256).cpu.kv_cache
    per_layer = full // 2
    assert windowed == per_layer + per_layer * 768 // 2048  # layer 0 windowed, layer 1 full


def _profile(ram_free: int, gpu_free: int | None = None) -> HardwareProfile:
    devices = [BackendDevice("CPU", "cpu", "cpu", "CPU", ram_free, ram_free)]
    if gpu_free is not None:
        devices.insert(0, BackendDevice("CUDA0", "RTX Test", "gpu", "CUDA", gpu_free, gpu_free))
    return HardwareProfile(
        os="Linux", os_version="6", cpu=CpuInfo("cpu", "x86_64", 8, 16, AVX2),
        ram_total=ram_free, ram_available=ram_free,
        llama=LlamaBuild("0.3", ("CUDA", "CPU"), tuple(devices), "", gpu_free is not None))


def test_plan_cpu_only(smol: ModelInfo) -> None:
    fit = plan(smol, _profile(16 * GIB))
    assert fit.fit == "ram" and fit.badge == "Fits in RAM" and fit.n_gpu_layers == 0
    assert fit.n_ctx == 4096 and fit.max_ctx == 8192
    assert fit.explanation[0].startswith("Runs on the CPU in 0.")


def test_plan_all_on_a_large_gpu(smol: ModelInfo) -> None:
    fit = plan(smol, _profile(16 * GIB, 8 * GIB))
    assert fit.fit == "gpu" and fit.n_gpu_layers == 31
    assert "All 30 layers fit on RTX Test" in fit.explanation[0]


def test_plan_partial_offload_on_a_small_gpu(smol: ModelInfo) -> None:
    full = estimate(smol, 4096, -1)
    assert full.gpu is not None
    budget = full.gpu.total // 2
    # usable = free x 0.95 - 256 MiB: choose "free" so that about half the model fits
    fit = plan(smol, _profile(16 * GIB, int((budget + 256 * MIB) / 0.95)))
    assert fit.fit == "partial"
    assert 0 < fit.n_gpu_layers < 31
    assert fit.estimate.gpu is not None and fit.estimate.gpu.total <= budget + MIB
    assert "layers fit on RTX Test" in fit.explanation[0]


def test_plan_too_large_and_shorter_context(smol: ModelInfo) -> None:
    tight = plan(smol, _profile(3 * GIB // 2 + 300 * MIB), n_ctx=8192)
    assert tight.fit == "too_large" and "shorter context" in tight.explanation[0]
    assert 0 < tight.max_ctx < 8192


def test_pair_loads_together_when_both_fit_and_splits_the_cores(smol: ModelInfo) -> None:
    one = plan(smol, _profile(16 * GIB)).estimate.cpu.total
    roomy = plan_pair(smol, smol, _profile(16 * GIB), 4096)
    assert roomy.together and roomy.threads_each == 4  # 8 physical cores, shared
    assert "same time on 4 CPU thread(s) each" in roomy.explanation
    # RAM for one model and a half (plus the reserve kept for the system): one after the other
    tight = plan_pair(smol, smol, _profile(3 * GIB // 2 + one * 3 // 2), 4096)
    assert not tight.together and tight.threads_each is None
    assert tight.first.fit == "ram" and "one after the other" in tight.explanation


def test_pair_on_a_large_gpu_keeps_all_cores(smol: ModelInfo) -> None:
    pair = plan_pair(smol, smol, _profile(16 * GIB, 8 * GIB), 4096)
    assert pair.together and pair.threads_each is None
    assert pair.first.fit == pair.second.fit == "gpu"


def test_estimate_matches_the_engine_child(tiny_model: Path) -> None:
    """One real measurement in the suite (bench/memory.py runs the full matrix)."""
    info = read_model_info(tiny_model)
    host = ModelHost()
    try:
        loaded = host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
        done = list(host.chat_stream([ChatMessage("user", "x" * 1900)],
                                     Sampling(max_tokens=1, ignore_eos=True)))[-1]
        assert isinstance(done, ReplyDone)
        measured = done.metrics.peak_rss_bytes - loaded.rss_before_bytes
    finally:
        host.shutdown()
    from app.engine.probe import full_profile

    predicted = estimate(info, 2048, cpu_features=full_profile().cpu.features).total
    assert abs(predicted - measured) <= max(0.10 * measured, 64 * MIB)


@pytest.mark.parametrize("free_mib", [300, 390, 400, 420, 450, 480, 520, 560, 4000])
def test_plan_offloads_the_most_layers_that_fit(smol: ModelInfo, free_mib: int) -> None:
    """The plan's layer count is the largest one whose GPU share fits: checked against trying
    every count, on budgets from nothing to everything."""
    profile = _profile(16 * GIB, free_mib * MIB)
    usable = int(free_mib * MIB * 0.95) - 256 * MIB
    fitting = [n for n in range(1, smol.n_layers + 2)
               if (gpu := estimate(smol, 4096, n, gpu_name="x").gpu) is not None
               and gpu.total <= usable]
    assert plan(smol, profile).n_gpu_layers == max(fitting, default=0)


def test_the_plan_in_one_sentence(smol: ModelInfo) -> None:
    from app.core.units import format_bytes

    on_gpu = plan(smol, _profile(16 * GIB, 8 * GIB), n_ctx=8192)
    assert on_gpu.sentence() == \
        f"needs {format_bytes(on_gpu.estimate.total)} at 8K context: fits on your GPU"
    in_ram = plan(smol, _profile(16 * GIB), n_ctx=2048)
    assert in_ram.sentence().endswith("fits in your RAM; up to 8K context fits")
    tight = plan(smol, _profile(3 * GIB // 2 + 300 * MIB), n_ctx=8192)
    assert "too large for this machine" in tight.sentence()
    assert on_gpu.to_json()["sentence"] == on_gpu.sentence()


def test_context_labels() -> None:
    from app.core.memory import context_label

    assert [context_label(n) for n in (2048, 8192, 131072, 1000, 1536)] == \
        ["2K", "8K", "128K", "1,000", "1,536"]


def test_flash_attention_auto_follows_where_the_layers_run() -> None:
    from app.core.memory import flash_attention, scores_bytes

    gib = 1024**3
    small = {"scores_bytes": scores_bytes(9, 4096), "weights_bytes": 100 * 1024**2}
    # CPU alone, scores within the allowance: off (llama.cpp's CPU flash attention loses at
    # depth); offloaded layers or a quantized V cache: on; explicit settings win
    assert not flash_attention(None, 0, **small)
    assert flash_attention(None, 10, **small) and flash_attention(None, -1, **small)
    assert flash_attention(None, 0, "q8_0", **small)
    assert flash_attention(True, 0, **small) and not flash_attention(False, 5, **small)
    # a Llama-3-8B-sized model: 8k context keeps it off, 32k would cost 3 GiB of scores: on
    big = 5 * gib
    assert not flash_attention(None, 0, scores_bytes=scores_bytes(32, 8192), weights_bytes=big)
    assert flash_attention(None, 0, scores_bytes=scores_bytes(32, 32768), weights_bytes=big)
