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


def test_a_perplexity_gone_wild_is_written_short() -> None:
    ppl = next(c for c in report.COLUMNS if c.key == "ppl")
    assert report.cell_text(ppl, 8.123456) == "8.123"  # as llama-perplexity prints it
    # random weights: a 41-digit number widened the table past the window
    assert report.cell_text(ppl, 3.5639983906e40) == "3.56e+40"


def test_the_recommendation_says_a_small_size_in_mib() -> None:
    reference = {"name": "m-F16", "reference": True, "size_gib": 0.25, "kld": None, "tg": 80.0,
                 "rss_gib": 0.4}
    q4 = {"name": "m-Q4_K_M", "reference": False, "size_gib": 92_000_000 / 2**30,
          "kld": 0.03, "tg": 120.0, "rss_gib": 0.2}
    assert "m-Q4_K_M (87.7 MiB, KLD 0.0300)" in report.recommendation([reference, q4])
