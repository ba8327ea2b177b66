"""The Quantize & Compare page: a real quantize job, a real evaluation, the table, the charts,
the recommendation and the exports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.core import report
from app.core.storage import Storage
from app.engine.evaluate import Evaluation, evaluate
from app.ui.compare.page import QuantizeComparePage


@pytest.fixture(scope="module")
def tiny_evaluation(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    """The tiny model (F32) as reference against its Q8_0 and Q2_K quantizations."""
    from app.engine.quantize import QuantizeOptions, quantize

    folder = tmp_path_factory.mktemp("variants")
    cands = []
    for quant in ("Q8_0", "Q2_K"):
        out = folder / f"tiny-{quant}.gguf"
        list(quantize(tiny_model, out, QuantizeOptions(quant)))
        cands.append(out)
    result = list(evaluate(tiny_model, cands, "The quick brown fox jumps. " * 300, n_ctx=128,
                           max_chunks=2, speed_reps=1))[-1]
    assert isinstance(result, Evaluation)
    return result


def test_stored_comparison_shows_rows_charts_and_recommendation(
        qtbot: QtBot, store: Storage, tiny_evaluation: Evaluation) -> None:
    store.add_evaluation("tiny", tiny_evaluation.to_json())
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    panel = page.compare
    assert panel.stored.count() == 1
    assert panel.table.rowCount() == 3
    names = [panel.table.item(i, 0).text() for i in range(3)]
    assert names[0].endswith("(reference)")
    kld_col = [c.key for c in report.COLUMNS].index("kld")
    # the best KLD is highlighted on the Q8_0 row
    best_row = next(i for i in range(3) if "Q8_0" in panel.table.item(i, 0).text())
    assert panel.table.item(best_row, kld_col).toolTip() == "best of the variants"
    # sorting by KLD puts the reference (no KLD) last, Q8_0 before Q2_K
    panel.table.sortItems(kld_col)
    order = [panel.table.item(i, 1).text() for i in range(3)]
    assert order == ["Q8_0", "Q2_K", "F32"]
    points = panel.quality_chart.chart().series()[1]
    assert points.count() == 2  # the two candidates (the reference has no KLD)
    front = panel.quality_chart.chart().series()[0]
    assert front.count() >= 1
    # hovering a point names its variant
    point = points.at(0)
    points.hovered.emit(point, True)
    assert panel.quality_chart.hover_text.startswith("tiny-")
    assert "Smallest within" in panel.recommendation.text() or "closest" in \
        panel.recommendation.text()
    panel.budget.setValue(5.0)
    assert "tiny-Q2_K" in panel.recommendation.text()  # the smallest now fits the budget


def test_exports_contain_the_numbers(qtbot: QtBot, store: Storage,
                                     tiny_evaluation: Evaluation) -> None:
    store.add_evaluation("tiny", tiny_evaluation.to_json())
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    panel = page.compare
    rows = list(csv.DictReader(io.StringIO(panel.export_text("csv"))))
    assert [r["quant"] for r in rows] == ["F32", "Q8_0", "Q2_K"]
    q2 = tiny_evaluation.candidates[1].quality
    assert float(rows[2]["kld"]) == pytest.approx(q2.kld_mean)
    data = json.loads(panel.export_text("json"))
    assert Evaluation.from_json(data["evaluation"]) == tiny_evaluation
    html = panel.export_text("html")
    assert html.count("data:image/png;base64,") == 3
    assert f"{q2.kld_mean:.5f}" in html and "<table>" in html


def test_quantize_panel_makes_variants_and_hands_them_to_compare(
        qtbot: QtBot, store: Storage, tiny_model_f16: Path, tmp_path: Path) -> None:
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    panel = page.quantize
    panel.source.setText(str(tiny_model_f16))
    out = tmp_path / "out"
    panel.out_dir.setText(str(out))
    for name, box in panel.checks.items():
        box.setChecked(name in ("Q8_0", "IQ2_XS"))
    panel.calibration.setCurrentIndex(1)  # the bundled calibration text
    panel.start()
    qtbot.waitUntil(lambda: panel.start_button.isEnabled(), timeout=120_000)
    assert "Done: 2 files" in panel.status.text(), panel.status.text()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["tiny-llama-IQ2_XS-imat.gguf", "tiny-llama-Q8_0-imat.gguf",
                     "tiny-llama.imatrix.gguf"]
    panel.compare_button.click()
    assert page.tabs.currentWidget() is page.compare
    assert page.compare.candidates.count() == 2
    assert page.compare.reference.text() == str(tiny_model_f16)


def test_quantize_panel_reports_a_bad_source(qtbot: QtBot, store: Storage,
                                             tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    panel = page.quantize
    panel.source.setText(str(bad))
    panel.out_dir.setText(str(tmp_path / "out"))
    panel.start()
    qtbot.waitUntil(lambda: panel.start_button.isEnabled(), timeout=60_000)
    assert panel.status.text().startswith("Stopped:")
    assert "bad.gguf" in panel.status.text() or "GGUF" in panel.status.text()
