"""Auto mix against the stock types at equal size, on SmolLM2 (F16 from the embedded file).

For each budget (the size of Q4_K_M, Q3_K_M, Q2_K): the stock type quantized with the
importance matrix of the bundled calibration text, and the auto mix at that size with the same
imatrix, both evaluated against the F16 reference on the bundled evaluation text (never the
calibration text). The stock type is the baseline, measured in the same run.

The F16 here is the embedded Q4_1 file dequantized: its block tensors lie exactly on Q4_1's
grid (and Q5_1's, a superset), its token embeddings on Q8_0's. A mix that may use Q4_1 finds
that grid back and is nearly lossless; a stock type never picks Q4_1. So the bench runs two
candidate sets: 'all' (every default candidate) and 'no-grid' (without Q4_1 and Q5_1), which
shows what the method gains without the grid. Timings are of a shared 2-core machine: noisy.

    .venv/bin/python -m bench.automix [--chunks N] [--measure quick|full] [--sets all,no-grid]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from app.core import automix as am
from app.core import recipe as rc
from app.core import resources
from app.engine import child
from app.engine import sensitivity as sens
from app.engine.evaluate import VariantDone, VariantResult, evaluate, measure_speed
from app.engine.imatrix import compute
from app.engine.quantize import QuantizeOptions, quantize
from app.pipeline.automix import allocate_recipe
from bench._llama_tools import smollm2_f16, work_dir

BUDGETS = ("Q4_K_M", "Q3_K_M", "Q2_K")
SETS = {"all": am.DEFAULT_CANDIDATES,
        "no-grid": tuple(t for t in am.DEFAULT_CANDIDATES if t not in ("Q4_1", "Q5_1"))}


def _drain(job: object) -> object:
    *_, last = job  # type: ignore[misc]
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=None,
                        help="chunks of 512 tokens of the evaluation text (default: all)")
    parser.add_argument("--measure", default="quick", choices=["proxy", "quick", "full"])
    parser.add_argument("--sets", default="all,no-grid")
    parser.add_argument("--speed-reps", type=int, default=2)
    args = parser.parse_args()
    os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-automix-")
    folder = work_dir() / "automix"
    folder.mkdir(exist_ok=True)
    src = smollm2_f16()
    child.keep_warm()

    t = time.perf_counter()
    imatrix = folder / "SmolLM2-calibration.imatrix.gguf"
    _drain(compute(src, resources.calibration_text(), imatrix, dataset="quantdesk-calibration"))
    imatrix_s = time.perf_counter() - t

    files: list[tuple[str, str, Path]] = []  # (set, variant, path)
    notes: dict[tuple[str, str], dict[str, object]] = {}
    searches: dict[str, float] = {}
    for set_name in args.sets.split(","):
        types = SETS[set_name]
        t = time.perf_counter()
        table = _drain(sens.proxy(src, imatrix, types=types))
        assert isinstance(table, am.SensitivityTable)
        if args.measure != "proxy":
            table = _drain(sens.measure(src, table, resources.calibration_text(),
                                        mode=args.measure, imatrix=imatrix, work_dir=folder))
            assert isinstance(table, am.SensitivityTable)
        recipes = {}
        for budget in BUDGETS:
            recipes[budget], stock_loss = allocate_recipe(
                src, table, am.Budget(stock=budget), budget, f"bench-{set_name}-{budget}")
            notes[(set_name, budget)] = {"recipe": recipes[budget], "stock_loss": stock_loss}
        searches[set_name] = time.perf_counter() - t  # proxy, measurement, 3 allocations
        for budget, recipe in recipes.items():
            rc.save(recipe, folder / f"{recipe.name}.json")
            out = folder / f"mix-{set_name}-{budget}.gguf"
            _drain(quantize(src, out, QuantizeOptions(budget, overrides=recipe.overrides(),
                                                      imatrix=str(imatrix))))
            files.append((set_name, budget, out))
    for budget in BUDGETS:
        out = folder / f"stock-{budget}.gguf"
        _drain(quantize(src, out, QuantizeOptions(budget, imatrix=str(imatrix))))
        files.append(("stock", budget, out))

    results: dict[Path, VariantResult] = {}
    t = time.perf_counter()
    for event in evaluate(src, [p for _, _, p in files], resources.evaluation_text(),
                          max_chunks=args.chunks, speed_reps=0):
        if isinstance(event, VariantDone):
            results[Path(event.result.path)] = event.result
    eval_s = time.perf_counter() - t
    child.stop_warm()
    speeds = {p: measure_speed(p, args.speed_reps) for _, _, p in files} \
        if args.speed_reps else {}

    ref = results[src]
    print(f"SmolLM2-135M-Instruct F16 (from the embedded Q4_1), imatrix: bundled calibration "
          f"text ({imatrix_s:.0f} s); evaluation text, {ref.quality.tokens_scored:,} tokens "
          f"scored; sensitivity: {args.measure}; eval {eval_s:.0f} s")
    print(f"{'budget':<7} {'variant':<15} {'MiB':>7} {'size':>6} {'BPW':>5} {'KLD':>8} {'±':>7} "
          f"{'PPL':>7} {'±':>5} {'top':>6} {'pp512':>6} {'tg128':>6} {'vs stock':>9} "
          f"{'pred':>7}")
    for budget in BUDGETS:
        stock_path = next(p for s, b, p in files if s == "stock" and b == budget)
        stock = results[stock_path]
        rows = [("stock", stock_path)] + [(s, p) for s, b, p in files
                                          if b == budget and s != "stock"]
        for set_name, path in rows:
            r = results[path]
            q = r.quality
            speed = speeds.get(path)
            assert q.kld_mean is not None and stock.quality.kld_mean is not None
            gain = 1 - q.kld_mean / stock.quality.kld_mean
            bar = ((q.kld_error or 0) ** 2 + (stock.quality.kld_error or 0) ** 2) ** 0.5
            verdict = "" if set_name == "stock" else (
                f"{-gain:+.0%}{'*' if stock.quality.kld_mean - q.kld_mean > bar else ' '}")
            note = notes.get((set_name, budget), {})
            pred = note.get("recipe")
            pred_text = f"{pred.predicted_kld:.4f}" if isinstance(pred, rc.Recipe) and \
                pred.predicted_kld is not None else ""
            label = budget if set_name == "stock" else "mix " + set_name
            size = f"{r.size / stock.size - 1:+.1%}" if set_name != "stock" else ""
            print(f"{budget:<7} {label:<15} {r.size / 2**20:>7.2f} {size:>6} "
                  f"{r.bits_per_weight:>5.2f} "
                  f"{q.kld_mean:>8.5f} {q.kld_error:>7.5f} {q.ppl:>7.3f} {q.ppl_error:>5.3f} "
                  f"{q.same_top:>6.1%} "
                  + (f"{speed.pp_tokens_per_s:>6.0f} {speed.tg_tokens_per_s:>6.1f} "
                     if speed else f"{'':>6} {'':>6} ")
                  + f"{verdict:>9} {pred_text:>7}")
    print("size: file size against the stock type's. vs stock: change of mean KLD against the "
          "stock type; * = lower by more than the combined error bar. pred: the mix's KLD "
          "predicted from the calibration text.")
    for set_name, seconds in searches.items():
        print(f"search ({set_name}): {seconds:.0f} s for the sensitivity and 3 allocations "
              f"(+ {imatrix_s:.0f} s for the imatrix)")
    for (set_name, budget), note in notes.items():
        recipe = note["recipe"]
        assert isinstance(recipe, rc.Recipe)
        print(f"\n{set_name} {budget}: {recipe.bits_per_weight:.3f} BPW of tensors; "
              f"predicted stock KLD {note['stock_loss']}")
        for line in recipe.describe():
            print(f"  {line}")


if __name__ == "__main__":
    main()
