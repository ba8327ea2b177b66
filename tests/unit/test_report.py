"""Comparison tables as a person reads them (``app.core.report``)."""

from __future__ import annotations

from app.core import report


def test_sizes_read_in_mib_below_a_gib_and_in_hundredths_of_a_gib_above() -> None:
    size = next(c for c in report.COLUMNS if c.key == "size_gib")
    memory = next(c for c in report.COLUMNS if c.key == "rss_gib")
    # SmolLM2-135M's Q4_K_M and Q8_0 (0.087 and 0.135 GiB read as nearly the same before)
    assert report.cell_text(size, 92_000_000 / 2**30) == "87.7 MiB"
    assert report.cell_text(size, 144_700_000 / 2**30) == "138.0 MiB"
    assert report.cell_text(memory, 4.368) == "4.37 GiB"  # an 8B model's Q4_K_M
    assert report.cell_text(size, None) == "–"
