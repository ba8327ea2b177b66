"""The quantize wizard on the embedded model, headless, as a newcomer's first run would go.

SmolLM2-135M-Instruct (Q4_1) → an F16 reference made from it → importance matrix from the bundled
calibration text → the five types the plan ticks on this machine → a quick evaluation of each
against the reference → the recommendation. Prints each step's wall time beside the plan's
prediction (from this machine's measured speed), the comparison, and the total against the
target (under 10 minutes on a 2-core machine). A fresh data folder every run: nothing reused.

    .venv/bin/python -m bench.wizard [--eval quick|standard|thorough] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", default="quick", choices=["quick", "standard", "thorough"])
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="quantdesk-wizard-bench-"))
    os.environ["QUANTDESK_HOME"] = str(home)

    from app.core import report
    from app.core.bandwidth import bandwidth
    from app.core.runs import RunStore
    from app.core.storage import Storage
    from app.engine import child
    from app.engine.probe import full_profile
    from app.pipeline import events as ev
    from app.pipeline import plans, wizard
    from app.pipeline.runner import Runner
    from app.pipeline.steps import KINDS, Rates

    started = time.perf_counter()
    source = wizard.resolve(wizard.EMBEDDED)
    profile = full_profile()
    options = wizard.type_options(source, profile, imatrix=True, bandwidth=bandwidth(profile))
    ticked = [o for o in options if o.ticked]
    rates, tokens = wizard.measure_rates(source)
    planning = time.perf_counter() - started
    choice = wizard.WizardChoice(source, tuple(o.quant for o in ticked), evaluation=args.eval,
                                 rates=rates, text_tokens=tokens)
    plan = wizard.wizard_plan(choice)
    store = Storage()
    run_id = plans.create(store, plan)
    print(f"Source {source.label} ({source.summary()}); types {', '.join(choice.types)}; "
          f"{args.eval} evaluation; measured prompt {rates.prompt_tokens_per_s:.0f} tok/s, "
          f"generation {rates.generation_tokens_per_s:.0f} tok/s; planning took "
          f"{planning:.1f} s")
    child.keep_warm()
    run_started = time.perf_counter()
    outputs: dict = {}
    for event in Runner().run(run_id):
        if isinstance(event, ev.RunFinished):
            outputs = event.outputs
    run_seconds = time.perf_counter() - run_started
    child.stop_warm()
    rates_used = Rates.from_json(plan.options["rates"])

    print("\n| step | predicted s | wall s |\n|---|---:|---:|")
    predicted_total = 0.0
    for step in RunStore(store).steps(run_id):
        predicted = KINDS[step.kind].predict(step.params, rates_used)
        predicted_total += predicted
        print(f"| {step.label} | {predicted:.1f} | {step.seconds or 0:.1f} |")
    total = planning + run_seconds
    print(f"| **planning + run** | {predicted_total:.1f} (run) | **{total:.1f}** |")
    print(f"\ntarget: under {TARGET_SECONDS / 60:.0f} min — "
          f"{'met' if total < TARGET_SECONDS else 'MISSED'} ({total / 60:.1f} min)")

    evaluation = store.evaluation(int(outputs["summary"]["evaluation_id"])).result
    rows = report.rows(evaluation)
    print("\n| variant | type | MiB | BPW | PPL | KLD | same top | tg128 t/s |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kld = f"{r['kld']:.4f}" if r["kld"] is not None else "reference"
        same = f"{r['same_top']:.1%}" if r["same_top"] is not None else ""
        tg = f"{r['tg']:.1f}" if r["tg"] else ""
        print(f"| {r['name']} | {r['quant']} | {r['size_gib'] * 1024:.1f} | {r['bpw']:.2f} | "
              f"{r['ppl']:.3f} | {kld} | {same} | {tg} |")
    print(f"\nRecommended: {report.explain(rows)[1]}")
    store.close()
    if args.keep:
        print(f"data folder kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
