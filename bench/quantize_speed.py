"""Quantizing SmolLM2's F16 form to Q8_0, Q4_K_M and Q2_K: QuantDesk against llama-quantize.

Both run llama.cpp's quantizer at the same thread count; QuantDesk's time is what the caller of
``app.engine.quantize.quantize`` waits for, end to end: the child process's start, the checks
before (source, disk), progress parsing, and the read-back and rename after. llama-quantize's
time is its process's wall time. Median of N interleaved runs. Target: ratio ≤ 1.05.

"warm" is how the app runs jobs: it keeps a spare child with llama_cpp imported
(``app.engine.child.keep_warm``), so a job does not pay the interpreter's start and the import.
"cold" is a job that spawns its own child (the first job before the spare is up). The bench
waits for the spare to finish its imports before timing either side, so the spare's start
does not take CPU from the run being timed.

    QUANTDESK_LLAMA_TOOLS=… .venv/bin/python -m bench.quantize_speed [--threads 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from app.engine import child
from app.engine.quantize import QuantizeOptions, quantize
from bench._llama_tools import run_timed, smollm2_f16, tool, work_dir

TYPES = ("Q8_0", "Q4_K_M", "Q2_K")


def ours(quant: str, threads: int, warm: bool) -> float:
    out = work_dir() / f"ours-{quant}.gguf"
    if warm:
        child.keep_warm()
        child.wait_warm()
    else:
        child.stop_warm()
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
    print(f"{'type':<8} {'warm s':>8} {'cold s':>8} {'llama-quantize s':>17} "
          f"{'warm ratio':>11} {'cold ratio':>11}")
    for quant in TYPES:
        warm, cold, theirs = [], [], []
        for _ in range(args.reps):
            warm.append(ours(quant, args.threads, warm=True))
            cold.append(ours(quant, args.threads, warm=False))
            if baseline:
                child.stop_warm()
                out = work_dir() / f"theirs-{quant}.gguf"
                seconds, _ = run_timed([str(baseline), str(src), str(out), quant,
                                        str(args.threads)])
                theirs.append(seconds)
                out.unlink()
        w, c = statistics.median(warm), statistics.median(cold)
        if theirs:
            t = statistics.median(theirs)
            print(f"{quant:<8} {w:>8.3f} {c:>8.3f} {t:>17.3f} {w / t:>11.3f} {c / t:>11.3f}")
        else:
            print(f"{quant:<8} {w:>8.3f} {c:>8.3f} {'-':>17} {'-':>11} {'-':>11}")
    child.stop_warm()


if __name__ == "__main__":
    main()
