"""Quality, size and speed of SmolLM2's quantizations against its F16 form, checked against
llama.cpp's perplexity tool and llama-bench.

QuantDesk's numbers come from ``app.engine.evaluate`` (reference distributions cached in the
compact top-K + sampled-tail form); llama.cpp's from llama-perplexity (``--kl-divergence-base``
then ``--kl-divergence``, full uint16 distributions) and llama-bench (pp512, tg128), on the same
files, text, n_ctx and threads. Targets: quality orders Q8_0 best … Q2_K worst; PPL within 0.5%
and mean KLD within 5% of llama-perplexity's; tokens scored per second ≥ 90% of its.

Throughput is end to end on both sides (process start, load, tokenize, every chunk).

    QUANTDESK_LLAMA_TOOLS=… .venv/bin/python -m bench.quality [--chunks N] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

from app.core import resources
from app.engine import child
from app.engine.evaluate import VariantDone, VariantResult, evaluate, measure_speed
from bench._llama_tools import quantized, run_timed, smollm2_f16, tool, work_dir

TYPES = ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K")


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if not match:
        raise RuntimeError(f"llama-perplexity's output has no match for {pattern!r}: has its "
                           "output format changed?")
    return float(match[1])


def llama_perplexity(exe: Path, ref: Path, candidates: list[Path], text: Path, chunks: int,
                     threads: int) -> dict[str, dict[str, float]]:
    base = work_dir() / "reference.kld"
    common = ["-c", "512", "--chunks", str(chunks), "-t", str(threads)]
    seconds, out = run_timed([str(exe), "-m", str(ref), "-f", str(text), *common,
                              "--kl-divergence-base", str(base)])
    results: dict[str, dict[str, float]] = {
        ref.name: {"ppl": _number(r"Final estimate: PPL = ([\d.]+)", out), "seconds": seconds}}
    for cand in candidates:
        seconds, out = run_timed([str(exe), "-m", str(cand), *common, "--kl-divergence-base",
                                  str(base), "--kl-divergence"])
        results[cand.name] = {
            "ppl": _number(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", out),
            "kld": _number(r"Mean\s+KLD:\s*([-\d.]+)", out),
            "median": _number(r"Median\s+KLD:\s*([-\d.]+)", out),
            "same_top": _number(r"Same top p:\s*([\d.]+)", out),
            "rms_dp": _number(r"RMS Δp\s*:\s*([\d.]+)", out),
            "seconds": seconds}
    return results


def llama_bench(exe: Path, model: Path, threads: int) -> tuple[float, float]:
    _, out = run_timed([str(exe), "-m", str(model), "-p", "512", "-n", "128", "-r", "3",
                        "-t", str(threads), "-o", "json"])
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    return pp, tg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=12, help="chunks of 512 tokens to score")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ref = smollm2_f16()
    cands = [quantized(q) for q in TYPES]
    text_path = resources.resource(resources.EVALUATION_TEXT)
    text = text_path.read_text(encoding="utf-8")

    # A home of its own: the reference's distributions are computed in this run, not read
    # from an earlier run's cache, so its throughput is measured too.
    os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-home-")
    ours: dict[str, tuple[VariantResult, float]] = {}
    child.keep_warm()  # as the app does: each variant's child is started ahead of its turn
    child.wait_warm()
    start = time.perf_counter()
    for event in evaluate(ref, cands, text, max_chunks=args.chunks, threads=args.threads,
                          speed_reps=0):
        if isinstance(event, VariantDone):
            ours[Path(event.result.path).name] = (event.result, time.perf_counter() - start)
            child.wait_warm()  # the next child's start is not the next variant's time
            start = time.perf_counter()
    child.stop_warm()
    speeds = {p.name: measure_speed(p, 3, args.threads) for p in (ref, *cands)}
    perplexity = tool("llama-perplexity")
    bench = tool("llama-bench")
    theirs = (llama_perplexity(perplexity, ref, cands, text_path, args.chunks, args.threads)
              if perplexity else {})

    print(f"SmolLM2-135M-Instruct, evaluation text, {args.chunks} chunks of 512 "
          f"({args.chunks * 255:,} tokens scored), {args.threads} threads")
    print(f"{'variant':<8} {'MiB':>6} {'BPW':>5} {'PPL':>8} {'±':>6} {'KLD':>8} {'median':>8} "
          f"{'p99':>7} {'top':>6} {'RMSΔp':>6} {'pp512':>7} {'tg128':>6}")
    for path in (ref, *cands):
        r, _ = ours[path.name]
        q, s = r.quality, speeds[path.name]
        kld = (f"{q.kld_mean:>8.5f} {q.kld_median:>8.5f} {q.kld_p99:>7.4f} {q.same_top:>6.1%} "
               f"{q.rms_dp:>6.2%}" if q.kld_mean is not None else f"{'(reference)':>40}")
        print(f"{r.quant:<8} {r.size / 2**20:>6.1f} {r.bits_per_weight:>5.2f} "
              f"{q.ppl:>8.3f} {q.ppl_error:>6.3f} {kld} {s.pp_tokens_per_s:>7.1f} "
              f"{s.tg_tokens_per_s:>6.1f}")
    if not theirs:
        return
    print("\nAgainst llama.cpp (same files, text, n_ctx, threads)")
    print(f"{'variant':<8} {'PPL':>8} {'llama':>8} {'Δ':>7} {'KLD':>8} {'llama':>8} {'Δ':>7} "
          f"{'top':>6} {'llama':>6} {'tok/s':>6} {'llama':>6} {'ratio':>6}"
          + (f" {'pp512':>6} {'llama':>6} {'tg128':>6} {'llama':>6}" if bench else ""))
    for path in (ref, *cands):
        r, seconds = ours[path.name]
        q, t = r.quality, theirs[path.name]
        ours_tps = q.tokens_scored / seconds
        their_tps = q.tokens_scored / t["seconds"]
        line = (f"{r.quant:<8} {q.ppl:>8.3f} {t['ppl']:>8.3f} "
                f"{q.ppl / t['ppl'] - 1:>+7.2%} ")
        if q.kld_mean is not None:
            line += (f"{q.kld_mean:>8.5f} {t['kld']:>8.5f} {q.kld_mean / t['kld'] - 1:>+7.2%} "
                     f"{q.same_top:>6.1%} {t['same_top'] / 100:>6.1%} ")
        else:
            line += f"{'':>8} {'':>8} {'':>7} {'':>6} {'':>6} "
        line += f"{ours_tps:>6.1f} {their_tps:>6.1f} {ours_tps / their_tps:>6.2f}"
        if bench:
            pp, tg = llama_bench(bench, path, args.threads)
            s = speeds[path.name]
            line += (f" {s.pp_tokens_per_s:>6.0f} {pp:>6.0f} "
                     f"{s.tg_tokens_per_s:>6.1f} {tg:>6.1f}")
        print(line)


if __name__ == "__main__":
    main()
