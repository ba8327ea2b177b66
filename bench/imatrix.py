"""Importance matrix: QuantDesk's collection against llama-imatrix, and what it buys.

1. Throughput: SmolLM2 F16 over the bundled calibration text (n_ctx 512, all chunks), same
   threads. QuantDesk's time is ``app.engine.imatrix.compute`` end to end (child start, load,
   tokenize, every chunk, save); llama-imatrix's is its process's wall time, run twice: with
   ``--no-ppl`` (the same work) and with its default (it also computes perplexity). Median of N.
   Target: QuantDesk ≥ 80% of llama-imatrix's tokens per second.
2. Agreement: the two matrices' per-column means, largest relative difference.
3. Benefit: Q4_K_M and Q3_K_M quantized with and without the matrix, KL divergence against the
   F16 reference on the bundled *evaluation* text (a different text). Target: lower with it.

    QUANTDESK_LLAMA_TOOLS=… .venv/bin/python -m bench.imatrix [--threads 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from app.core import resources
from app.engine import imatrix as im
from app.engine.evaluate import Evaluation, evaluate
from bench._llama_tools import quantized, run_timed, smollm2_f16, tool, work_dir


def ours(model: Path, text: str, threads: int, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    for event in im.compute(model, text, out, threads=threads, dataset="calibration.txt"):
        if isinstance(event, im.Computed):
            tokens = event.tokens
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--eval-chunks", type=int, default=None,
                        help="chunks of the evaluation text for the KLD part (default: all)")
    args = parser.parse_args()
    model = smollm2_f16()
    text_path = resources.resource(resources.CALIBRATION_TEXT)
    text = text_path.read_text(encoding="utf-8")
    ours_out = work_dir() / "ours.imatrix.gguf"
    baseline = tool("llama-imatrix")

    mine, same_work, default = [], [], []
    tokens = 0
    for _ in range(args.reps):
        seconds, tokens = ours(model, text, args.threads, ours_out)
        mine.append(seconds)
        if baseline:
            base = [str(baseline), "-m", str(model), "-f", str(text_path), "-c", "512",
                    "-t", str(args.threads), "-o", str(work_dir() / "theirs.imatrix.gguf")]
            same_work.append(run_timed([*base, "--no-ppl"])[0])
            default.append(run_timed(base)[0])
    print(f"SmolLM2 F16, calibration text: {tokens:,} tokens in chunks of 512, "
          f"{args.threads} threads, median of {args.reps}")
    print(f"{'':<28} {'seconds':>8} {'tokens/s':>9} {'QuantDesk ÷ it':>15}")
    m = statistics.median(mine)
    print(f"{'QuantDesk':<28} {m:>8.2f} {tokens / m:>9.1f} {'':>15}")
    for label, runs in (("llama-imatrix --no-ppl", same_work), ("llama-imatrix (with PPL)",
                                                                 default)):
        if runs:
            t = statistics.median(runs)
            print(f"{label:<28} {t:>8.2f} {tokens / t:>9.1f} {t / m:>15.3f}")
    if baseline:
        a, b = im.load(ours_out), im.load(work_dir() / "theirs.imatrix.gguf")
        worst = max(float(np.max(np.abs(a.sums[k] / a.counts[k] - b.sums[k] / b.counts[k])
                                 / (np.abs(b.sums[k] / b.counts[k]) + 1e-12)))
                    for k in b.sums)
        print(f"agreement: {len(a.sums)} vs {len(b.sums)} tensors, same names: "
              f"{set(a.sums) == set(b.sums)}, largest relative difference of the means "
              f"{worst:.2e}")

    evaluation_text = resources.evaluation_text()
    candidates = []
    for quant in ("Q4_K_M", "Q3_K_M"):
        candidates += [quantized(quant), quantized(quant, imatrix=ours_out)]
    result = None
    for event in evaluate(model, candidates, evaluation_text, max_chunks=args.eval_chunks,
                          speed_reps=0):
        if isinstance(event, Evaluation):
            result = event
    assert result is not None
    print(f"\nKL divergence against F16 on the evaluation text ({result.chunks} chunks of "
          f"{result.n_ctx}, {result.reference.quality.tokens_scored:,} tokens scored)")
    print(f"{'variant':<16} {'PPL':>8} {'mean KLD':>10} {'median':>8} {'p99':>8} "
          f"{'same top':>9}")
    for c in result.candidates:
        q = c.quality
        label = c.quant + (" + imatrix" if c.name.endswith("-imat") else "")
        print(f"{label:<16} {q.ppl:>8.3f} {q.kld_mean:>10.5f} {q.kld_median:>8.5f} "
              f"{q.kld_p99:>8.4f} {q.same_top:>9.2%}")


if __name__ == "__main__":
    main()
