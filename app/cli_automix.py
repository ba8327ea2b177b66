"""``quantdesk automix``: the auto mix from the command line (the run is the pipeline's).

``app.cli`` adds the subcommand with ``add_parser`` and calls ``command`` with its own helpers
for running a stored run (progress on stderr) and creating one, so that every command
reports the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RunPipeline = Callable[..., "dict[str, dict[str, Any]] | None"]


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """The ``automix`` subcommand's arguments, on ``sub`` (the CLI's subparsers)."""
    mix = sub.add_parser("automix", help="a type per tensor where this model is sensitive, at "
                                         "the size of a stock type, proven against it")
    mix.add_argument("src", help="source GGUF (F16/BF16/F32; a quantized one gets an F16 "
                                 "reference first)")
    mix.add_argument("--budget", required=True,
                     help="a stock type whose size to match (Q4_K_M) or bits per weight (4.5)")
    mix.add_argument("--imatrix", help="importance matrix (GGUF); default: computed from the "
                                       "bundled calibration text")
    mix.add_argument("--measure", default="quick", choices=["proxy", "quick", "full"],
                     help="proxy: no model run; quick/full: measure groups of tensors on the "
                          "calibration text (default quick)")
    mix.add_argument("--eval", default="quick", choices=["quick", "standard", "thorough"],
                     help="evaluation length of the proof (default quick)")
    mix.add_argument("--out-dir", help="where the files go (default: beside the source)")
    mix.add_argument("--threads", type=int, help="threads (default: one per core)")
    mix.add_argument("--json", action="store_true", help="print JSON")
    mix.set_defaults(func=func)


def command(args: argparse.Namespace, run_pipeline: RunPipeline,
            create_run: Callable[[Any], int]) -> int:
    """Plan, run and report an auto mix; the exit code (0 also when the mix lost: the
    report says so)."""
    from app.core.automix import AutomixError, Budget
    from app.core.storage import Storage
    from app.pipeline import automix
    from app.pipeline.events import PipelineError

    src = Path(args.src)
    try:
        budget = Budget.parse(args.budget)
        plan = automix.automix_plan(
            src, budget, Path(args.out_dir) if args.out_dir else src.parent,
            imatrix=Path(args.imatrix) if args.imatrix else None, measure=args.measure,
            evaluation=args.eval, threads=args.threads)
    except (AutomixError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = create_run(plan)
    if run_pipeline(run_id, quiet=args.json) is None:
        return 2
    store = Storage()
    try:
        found = automix.result(store, run_id)
    finally:
        store.close()
    if args.json:
        json.dump(found.to_json(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_result(found)
    return 0


def print_result(found: Any) -> None:
    """The mix beside the stock type, the verdict, and the recipe as llama-quantize args."""
    print(f"{'variant':<10} {'MiB':>7} {'BPW':>5} {'KLD':>9} {'±':>8} {'PPL':>8} {'top':>6} "
          f"{'pp512':>7} {'tg128':>6}")
    for name, v in ((found.recipe.base, found.stock), ("auto mix", found.mix)):
        q = v.quality
        speed = (f"{v.speed.pp_tokens_per_s:>7.1f} {v.speed.tg_tokens_per_s:>6.1f}"
                 if v.speed else "")
        print(f"{name:<10} {v.size / 2**20:>7.2f} {v.bits_per_weight:>5.2f} "
              f"{q.kld_mean:>9.5f} {q.kld_error:>8.5f} {q.ppl:>8.3f} {q.same_top:>6.1%} "
              f"{speed}")
    print(found.verdict())
    print(f"Sensitivity search: {found.search_seconds:.0f} s. Recipe ({len(found.recipe.rules)} "
          f"rules), saved as {found.recipe_path}:")
    for line in found.recipe.describe():
        print(f"  {line}")
    print("As llama-quantize arguments:")
    print("  " + found.recipe.command_line(imatrix="IMATRIX.gguf"))
