"""What quality to expect from a quant type before measuring: a small table of published and
measured KL divergences (``resources/expected_quality.json``, its sources named there).

Used where QuantDesk has to choose or explain before anything is measured (the wizard's plan,
the Recommended tab's ranking). It is an expectation, labelled so wherever it is shown: a
model's own evaluation replaces it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

from app.core.resources import resource

# Upper bounds of mean KLD for the words we use (roughly: Q8_0/Q6_K, Q5/Q4_K, Q4_0/Q3, Q2/IQ2).
BANDS: tuple[tuple[float, str], ...] = (
    (0.01, "near-lossless"), (0.05, "small loss"), (0.15, "noticeable loss"),
    (0.5, "large loss"), (float("inf"), "severe loss"))


@dataclass(frozen=True)
class Expected:
    """One source's figure for one type."""

    source: str  # the source's short title ("Llama 3 8B")
    kld: float
    same_top: float | None
    imatrix: bool  # measured with an importance matrix


def band(kld: float) -> str:
    """The words for a mean KLD: 'near-lossless' … 'severe loss'."""
    return next(words for bound, words in BANDS if kld < bound)


@cache
def _table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resource("expected_quality.json").read_text("utf-8"))
    return data


def sources() -> dict[str, dict[str, Any]]:
    """The table's sources: id → title, detail, url, n_params (the source model's size)."""
    found: dict[str, dict[str, Any]] = _table()["sources"]
    return found


def expected(quant: str, imatrix: bool = False) -> list[Expected]:
    """Each source's figure for ``quant``, the importance-matrix one when ``imatrix`` and it
    exists (else the plain one, and vice versa)."""
    entries: dict[str, dict[str, float]] = _table()["types"].get(quant.upper(), {})
    found = []
    for source_id, entry in entries.items():
        title = sources()[source_id]["title"]
        with_imatrix = (imatrix and "imatrix_kld" in entry) or "kld" not in entry
        kld = entry["imatrix_kld"] if with_imatrix else entry["kld"]
        found.append(Expected(title, kld, None if with_imatrix else entry.get("same_top"),
                              with_imatrix))
    return found


def for_model(quant: str, n_params: int, imatrix: bool = False) -> Expected | None:
    """The one figure to expect for ``quant`` on a model of ``n_params`` parameters: the one of
    the source nearest in size (on a log scale: small models lose more at the same type) that
    has a figure for the type; None when no source has one."""
    figures = {e.source: e for e in expected(quant, imatrix)}
    if not figures:
        return None

    def distance(source: dict[str, Any]) -> float:
        return abs(math.log(max(n_params, 1) / max(int(source.get("n_params", 1)), 1)))

    nearest = min((s for s in sources().values() if s["title"] in figures), key=distance)
    return figures[nearest["title"]]


def describe(quant: str, imatrix: bool = False, short: bool = False) -> str:
    """'expected KLD 0.028 (Llama 3 8B, imatrix), 0.032 (SmolLM2 135M, imatrix): small loss'
    — or 'no published figure' when the table has none. ``short`` leaves out the prefix and
    the imatrix marks (for a column whose heading says both)."""
    figures = expected(quant, imatrix)
    if not figures:
        return "no published figure for this type"
    parts = ", ".join(f"{e.kld:.3g} ({e.source}{', imatrix' if e.imatrix and not short else ''})"
                      for e in figures)
    worst = max(e.kld for e in figures)
    return f"{parts}: {band(worst)}" if short else f"expected KLD {parts}: {band(worst)}"


def sources_text() -> str:
    """Where the table's figures come from, in a sentence per source."""
    return "\n".join(f"{s['title']}: {s['detail']}" for s in sources().values())
