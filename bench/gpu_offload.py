"""GPU offload on a machine with a GPU: what llama.cpp sees, the plan, and CPU against GPU.

Writes a synthetic Llama (F16, ~0.5 GB: big enough for the GPU to matter, no download), probes
the machine as the app does (devices and free/total memory as llama.cpp reports them), asks
``memory.plan`` where the model should go, then loads it in the engine child on the CPU and with
every layer offloaded, and generates 128 tokens each way. Printed: the devices, the plan, and per
run the load time, the GPU memory the engine measured against the estimate, and prompt and
generation speed (ratio GPU ÷ CPU in the same run). On a machine without a GPU it says so.

    .venv/bin/python -m bench.gpu_offload
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from app.core.gguf_info import read_model_info
from app.core.memory import MIB, estimate, plan
from app.engine.host import ModelHost
from app.engine.probe import full_profile
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling
from tests.helpers.tiny_model import write_tiny_llama


def run(model: Path, n_gpu_layers: int) -> tuple[float, int | None, float, float]:
    host = ModelHost()
    try:
        loaded = host.load_sync(LoadSettings(str(model), n_ctx=2048, n_gpu_layers=n_gpu_layers))
        done = list(host.chat_stream([ChatMessage("user", "Tell me a story. " * 60)],
                                     Sampling(max_tokens=128, ignore_eos=True, seed=1)))[-1]
        assert isinstance(done, ReplyDone)
        m = done.metrics
        return (loaded.load_seconds, loaded.gpu_bytes, m.prompt_tokens_per_second,
                m.generation_tokens_per_second)
    finally:
        host.shutdown()


def main() -> None:
    # the engine child's llama.cpp log lines, to see what a failed load or offload said
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    logging.getLogger("app.engine.host").setLevel(logging.INFO)
    profile = full_profile()
    print(f"llama.cpp {profile.llama.version}: backends {', '.join(profile.llama.backends)}")
    for d in profile.llama.devices:
        free = f"{d.memory_free / 2**30:.1f}" if d.memory_free is not None else "?"
        total = f"{d.memory_total / 2**30:.1f}" if d.memory_total is not None else "?"
        print(f"  {d.name:<10} {d.kind:<5} {d.description}: {free} of {total} GiB free")
    if not profile.gpus:
        print("No GPU that llama.cpp can use here: nothing to compare.")
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama(Path(tmp) / "synthetic-f16.gguf", n_layer=12, n_embd=1536,
                                 n_ff=4096, n_head=12, n_head_kv=4, f16=True)
        info = read_model_info(model)
        fit = plan(info, profile, n_ctx=2048)
        print(f"model: {info.n_params / 1e6:.0f}M parameters, "
              f"{info.file_size / 2**20:.0f} MiB; plan: {fit.badge}, {fit.n_gpu_layers} layers "
              "on the GPU")
        for line in fit.explanation:
            print(f"  {line}")
        print(f"{'run':<10} {'load s':>7} {'GPU MiB':>8} {'est. MiB':>9} {'prompt t/s':>11} "
              f"{'gen t/s':>8}")
        results = {}
        for label, layers in (("CPU", 0), ("all GPU", -1)):
            load, gpu, pp, tg = run(model, layers)
            est = estimate(info, 2048, layers, cpu_features=profile.repacking_features).gpu
            measured = f"{gpu / MIB:>8.0f}" if gpu is not None else f"{'-':>8}"
            predicted = f"{est.total / MIB:>9.0f}" if est is not None else f"{'-':>9}"
            print(f"{label:<10} {load:>7.2f} {measured} {predicted} {pp:>11.0f} {tg:>8.1f}")
            results[label] = (pp, tg)
        pp_ratio = results["all GPU"][0] / results["CPU"][0]
        tg_ratio = results["all GPU"][1] / results["CPU"][1]
        print(f"GPU ÷ CPU: prompt {pp_ratio:.1f}×, generation {tg_ratio:.1f}×")


if __name__ == "__main__":
    main()
