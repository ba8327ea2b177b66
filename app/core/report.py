"""Comparison tables as data: rows, the best values, the Pareto front, a recommendation, and
exports (CSV, JSON, a self-contained HTML report). Qt-free: charts arrive as PNG bytes.

A comparison is the JSON of an evaluation (``app.engine.evaluate.Evaluation.to_json``); this
module reads it as plain dictionaries so that stored results from older versions still open.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_KLD_BUDGET = 0.05


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    better: str  # "low", "high" or "" (not ranked)
    fmt: str | Callable[[Any], str]  # a format for the value, or what writes it


def size_text(gib: float) -> str:
    """A size given in GiB as a person reads it: a 135M model's quantizations differ by MiBs
    ("0.087 GiB" hid them), a 7B model's by hundredths of a GiB."""
    return f"{gib * 1024:.1f} MiB" if gib < 1 else f"{gib:.2f} GiB"


def _perplexity_text(ppl: float) -> str:
    """Three decimals, as llama-perplexity prints it; a model gone wrong (random weights, a
    ruined quantization) can reach 10^40, written as such instead of a 40-digit number."""
    return f"{ppl:.3f}" if ppl < 1e5 else f"{ppl:.3g}"


COLUMNS: tuple[Column, ...] = (
    Column("name", "Variant", "", "{}"),
    Column("quant", "Type", "", "{}"),
    Column("size_gib", "Size", "low", size_text),
    Column("bpw", "Bits/weight", "low", "{:.2f}"),
    Column("ppl", "Perplexity", "low", _perplexity_text),
    Column("kld", "KLD mean", "low", "{:.5f}"),
    Column("kld_p99", "KLD p99", "low", "{:.4f}"),
    Column("same_top", "Same top token", "high", "{:.1%}"),
    Column("rms_dp", "RMS Δp", "low", "{:.2%}"),
    Column("pp", "Prompt tok/s", "high", "{:.1f}"),
    Column("tg", "Generation tok/s", "high", "{:.1f}"),
    Column("rss_gib", "Peak memory", "low", size_text),
    Column("load_s", "Load (s)", "low", "{:.2f}"),
)


def rows(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per variant, the reference first (``reference`` True)."""
    out = []
    for variant in (evaluation["reference"], *evaluation["candidates"]):
        q, s = variant["quality"], variant.get("speed") or {}
        out.append({
            "name": variant["name"], "quant": variant["quant"],
            "reference": bool(variant.get("is_reference")),
            "size_gib": variant["size"] / 2**30, "bpw": variant["bits_per_weight"],
            "ppl": q["ppl"], "ppl_error": q["ppl_error"], "kld": q.get("kld_mean"),
            "kld_median": q.get("kld_median"), "kld_p99": q.get("kld_p99"),
            "same_top": q.get("same_top"), "rms_dp": q.get("rms_dp"),
            "pp": s.get("pp_tokens_per_s"), "tg": s.get("tg_tokens_per_s"),
            "rss_gib": variant["peak_rss"] / 2**30, "load_s": variant["load_seconds"],
            "path": variant["path"]})
    return out


def best(table: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """For each ranked column, the row index of the best candidate (the reference excluded)."""
    winners = {}
    for col in COLUMNS:
        if not col.better:
            continue
        values = [(r[col.key], i) for i, r in enumerate(table)
                  if not r["reference"] and r[col.key] is not None]
        if values:
            pick = min(values) if col.better == "low" else max(values)
            winners[col.key] = pick[1]
    return winners


def pareto_front(table: Sequence[Mapping[str, Any]], x: str = "size_gib",
                 y: str = "kld") -> list[int]:
    """Indices of the rows no other row beats on both x and y (lower is better), by x."""
    points = sorted((r[x], r[y], i) for i, r in enumerate(table) if r[y] is not None)
    front, best_y = [], float("inf")
    for _, value, i in points:
        if value < best_y:
            front.append(i)
            best_y = value
    return front


def recommendation(table: Sequence[Mapping[str, Any]], kld_budget: float = DEFAULT_KLD_BUDGET,
                   memory_gib: float | None = None) -> str:
    """The smallest variant within the quality budget, and the fastest that fits in memory."""
    cands = [r for r in table if not r["reference"] and r["kld"] is not None]
    if not cands:
        return "Evaluate at least one candidate to get a recommendation."
    within = [r for r in cands if r["kld"] <= kld_budget]
    parts = []
    if within:
        small = min(within, key=lambda r: r["size_gib"])
        parts.append(f"Smallest within KLD ≤ {kld_budget:g}: {small['name']} "
                     f"({size_text(small['size_gib'])}, KLD {small['kld']:.4f}).")
    else:
        closest = min(cands, key=lambda r: r["kld"])
        parts.append(f"No variant is within KLD ≤ {kld_budget:g}; the closest is "
                     f"{closest['name']} (KLD {closest['kld']:.4f}).")
    fits = [r for r in (within or cands) if r["tg"] is not None
            and (memory_gib is None or r["rss_gib"] <= memory_gib)]
    if fits:
        fast = max(fits, key=lambda r: r["tg"])
        parts.append(f"Fastest that fits here: {fast['name']} ({fast['tg']:.1f} tokens/s "
                     "generating).")
    return " ".join(parts)


def _speed_words(ratio: float) -> str:
    if ratio >= 1.05:
        return f"{ratio:.1f}× faster generation"
    if ratio <= 0.95:
        return f"{1 / ratio:.1f}× slower generation"
    return "about the same generation speed"


def explain(table: Sequence[Mapping[str, Any]], kld_budget: float = DEFAULT_KLD_BUDGET
            ) -> tuple[int | None, str]:
    """The recommended row (the smallest within the quality budget, else the closest to it)
    and why, in words from the measured numbers against the reference: 'Q4_K_M: 39% of the
    F16 size, KLD 0.050, 85% same top token, 1.6× faster generation — the smallest within your
    quality budget (KLD ≤ 0.05)'."""
    reference = next((r for r in table if r["reference"]), None)
    cands = [(i, r) for i, r in enumerate(table) if not r["reference"] and r["kld"] is not None]
    if reference is None or not cands:
        return None, "Evaluate at least one variant against a reference to get a " \
                     "recommendation."
    within = [(i, r) for i, r in cands if r["kld"] <= kld_budget]
    if within:
        index, pick = min(within, key=lambda ir: ir[1]["size_gib"])
        why = f"the smallest within your quality budget (KLD ≤ {kld_budget:g})"
    else:
        index, pick = min(cands, key=lambda ir: ir[1]["kld"])
        why = (f"none is within your quality budget (KLD ≤ {kld_budget:g}); this one comes "
               "closest")
    parts = [f"{pick['quant']}: {pick['size_gib'] / reference['size_gib']:.0%} of the "
             f"{reference['quant']} size", f"KLD {pick['kld']:.3f}"]
    if pick.get("same_top") is not None:
        parts.append(f"{pick['same_top']:.0%} same top token")
    if pick.get("tg") and reference.get("tg"):
        parts.append(_speed_words(pick["tg"] / reference["tg"]))
    return index, ", ".join(parts) + f" — {why}."


def to_csv(table: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    keys = ["name", "quant", "reference", "size_gib", "bpw", "ppl", "ppl_error", "kld",
            "kld_median", "kld_p99", "same_top", "rms_dp", "pp", "tg", "rss_gib", "load_s",
            "path"]
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


def to_json(evaluation: Mapping[str, Any], votes: Mapping[str, int] | None = None) -> str:
    return json.dumps({"evaluation": evaluation, "votes": dict(votes or {})}, indent=2)


def cell_text(col: Column, value: Any) -> str:
    """A value as the table and the report show it ("–" when there is none)."""
    if value is None:
        return "–"
    return col.fmt(value) if callable(col.fmt) else col.fmt.format(value)


def to_html(evaluation: Mapping[str, Any], charts: Mapping[str, bytes],
            votes: Mapping[str, int] | None = None, kld_budget: float = DEFAULT_KLD_BUDGET
            ) -> str:
    """A self-contained report: the table, the recommendation, charts inlined as PNG."""
    table = rows(evaluation)
    winners = best(table)
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in COLUMNS)
    body = []
    for i, r in enumerate(table):
        cells = []
        for col in COLUMNS:
            mark = ' class="best"' if winners.get(col.key) == i else ""
            cells.append(f"<td{mark}>{html.escape(cell_text(col, r[col.key]))}</td>")
        cls = ' class="reference"' if r["reference"] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, png in charts.items())
    tally = ""
    if votes:
        tally = "<p>A/B preferences: " + ", ".join(
            f"{html.escape(k)} {v}" for k, v in sorted(votes.items())) + "</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>QuantDesk comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.reference {{ background: #eef3ff; }}
td.best {{ background: #dff5e1; font-weight: 600; }}
figure {{ display: inline-block; margin: 1em; }}
</style></head><body>
<h1>QuantDesk comparison</h1>
<p>Text {html.escape(str(evaluation.get("text_name", "")))}, {evaluation["chunks"]} chunks of
{evaluation["n_ctx"]} tokens; {html.escape(str(evaluation["build"]))}. The reference row is
shaded; the best candidate value of each column is green.</p>
<p><strong>{html.escape(recommendation(table, kld_budget))}</strong></p>
<table><tr>{head}</tr>{"".join(body)}</table>
{tally}
{images}
</body></html>
"""
