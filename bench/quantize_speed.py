"""Quantizing SmolLM2's F16 form to Q8_0, Q4_K_M and Q2_K: QuantDesk against llama-quantize.

Both run llama.cpp's quantizer at the same thread count; QuantDesk's time is what the caller of
``app.engine.quantize.quantize`` waits for, end to end: the child process's start, the checks
before (source, disk), progress parsing, and the read-back and rename after. llama-quantize's
time is its process's wall time. Median of N interleaved runs. Target: ratio ≤ 1.05.

    QUANTDESK_LLAMA_TOOLS=… .venv/bin/python -m bench.quantize_speed [--threads 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from app.engine.quantize import QuantizeOptions, quantize
from bench._llama_tools import run_timed, smollm2_f16, tool, work_dir

TYPES = ("Q8_0", "Q4_K_M", "Q2_K")


def ours(quant: str, threads: int) -> float:
    out = work_dir() / f"ours-{quant}.gguf"
    start = time.perf_counter()
    for _ in quantize(smollm2_f16(), out, QuantizeOptions(quant, threads=threads)):
        pass
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    src = smollm2_f16()
    baseline = tool("llama-quantize")
    print(f"source: {src.name}, {src.stat().st_size / 2**20:.0f} MiB, threads {args.threads}, "
          f"median of {args.reps}")
    print(f"{'type':<8} {'QuantDesk s':>12} {'llama-quantize s':>17} {'ratio':>7}")
    for quant in TYPES:
        mine, theirs = [], []
        for _ in range(args.reps):
            mine.append(ours(quant, args.threads))
            if baseline:
                out = work_dir() / f"theirs-{quant}.gguf"
                seconds, _ = run_timed([str(baseline), str(src), str(out), quant,
                                        str(args.threads)])
                theirs.append(seconds)
                out.unlink()
        m = statistics.median(mine)
        if theirs:
            t = statistics.median(theirs)
            print(f"{quant:<8} {m:>12.3f} {t:>17.3f} {m / t:>7.3f}")
        else:
            print(f"{quant:<8} {m:>12.3f} {'-':>17} {'-':>7}")


if __name__ == "__main__":
    main()
