"""The Quantize & Compare page: a real quantize job, a real evaluation, the table, the charts,
the recommendation and the exports."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.core import report
from app.core.memory import RAM_RESERVE
from app.core.storage import Storage
from app.engine.evaluate import Evaluation, evaluate
from app.engine.probe import full_profile
from app.engine.protocol import ReplyDone
from app.ui.chat.chat_page import READ_AHEAD_PAUSE_MS
from app.ui.compare.ab_chat import TIE, ABChat
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
    # sizes read in MiB for models this small, and sort by their values
    size_col = [c.key for c in report.COLUMNS].index("size_gib")
    panel.table.sortItems(size_col)
    sizes = [panel.table.item(i, size_col).text() for i in range(3)]
    variants = [tiny_evaluation.candidates[1], tiny_evaluation.candidates[0],
                tiny_evaluation.reference]  # Q2_K, Q8_0, F32: smallest first
    assert sizes == [f"{v.size / 2**20:.1f} MiB" for v in variants]
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
    # the new-evaluation form is folded while a comparison is shown, and opens on request
    assert not panel.form.isVisibleTo(panel) and not panel.new_button.isChecked()
    panel.new_button.click()
    assert panel.form.isVisibleTo(panel)
    panel.new_button.click()
    assert not panel.form.isVisibleTo(panel)


def test_with_no_comparison_yet_the_page_opens_on_the_form(qtbot: QtBot,
                                                           store: Storage) -> None:
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    assert page.compare.stored.count() == 0
    assert page.compare.form.isVisibleTo(page.compare) and page.compare.new_button.isChecked()


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
    assert page.compare.form.isVisibleTo(page.compare)  # filled in, and in view


def test_an_evaluation_run_from_the_form_opens_its_comparison(
        qtbot: QtBot, store: Storage, tiny_model: Path, tiny_evaluation: Evaluation) -> None:
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    panel = page.compare
    panel.prefill(str(tiny_model), [tiny_evaluation.candidates[0].path])
    panel.chunks.setValue(1)
    panel.start()
    assert panel.running and panel.form.isVisibleTo(panel)
    panel.new_button.click()  # folding it while it runs keeps its progress in view
    assert panel.form.isVisibleTo(panel)
    qtbot.waitUntil(lambda: not panel.running, timeout=120_000)
    assert panel.status.text() == "Done; the comparison is saved.", panel.status.text()
    assert panel.stored.count() == 1 and panel.table.rowCount() == 2
    assert not panel.form.isVisibleTo(panel)  # the result, with the room to read it


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


def _show(qtbot: QtBot, store: Storage, evaluation: Evaluation) -> QuantizeComparePage:
    store.add_evaluation("tiny", evaluation.to_json())
    page = QuantizeComparePage(store)
    qtbot.addWidget(page)
    return page


def test_layer_view_draws_the_heatmap_and_a_tensors_histograms(
        qtbot: QtBot, store: Storage, tiny_evaluation: Evaluation) -> None:
    page = _show(qtbot, store, tiny_evaluation)
    view = page.compare.layer_view
    assert [view.candidate.itemText(i) for i in range(2)] == ["tiny-Q8_0", "tiny-Q2_K"]
    view.candidate.setCurrentIndex(1)
    view.resize(1000, 600)
    view.analyze()
    qtbot.waitUntil(lambda: view.report is not None, timeout=60_000)
    heatmap = view.heatmap
    assert heatmap.layer_ids == [0, 1] and len(heatmap.kinds) == 7
    assert view.progress.value() == view.progress.maximum() == len(view.report.tensors)
    assert "Largest errors" in view.status.text() and "Sampled" not in view.status.text()
    assert "token_embd" in view.outside.text()
    # hovering names the tensor; clicking shows its histograms
    j = heatmap.kinds.index("ffn_down")
    center = heatmap.cell_center(1, j)
    assert heatmap.tooltip_at(center.x(), center.y()).startswith("blk.1.ffn_down.weight\nF32 → ")
    qtbot.mouseClick(heatmap, Qt.MouseButton.LeftButton, pos=center.toPoint())
    qtbot.waitUntil(lambda: view.detail is not None, timeout=60_000)
    assert view.detail.name == "blk.1.ffn_down.weight"
    assert "Distinct values per block of 32" in view.detail_title.text()
    assert view.values_chart is not None and len(view.values_chart.chart().series()) == 2
    assert view.error_chart is not None and len(view.error_chart.chart().series()) == 1


def test_layer_view_says_when_it_sampled(qtbot: QtBot, store: Storage,
                                        tiny_evaluation: Evaluation) -> None:
    page = _show(qtbot, store, tiny_evaluation)
    view = page.compare.layer_view
    view.max_values = 256 * 16
    view.analyze()
    qtbot.waitUntil(lambda: view.report is not None, timeout=60_000)
    assert view.report.sampled
    assert "Sampled: tensors above 4,096 values" in view.status.text()


def _round(qtbot: QtBot, ab: ABChat, prompt: str) -> None:
    ab.prompt.setText(prompt)
    ab.send()
    qtbot.waitUntil(lambda: ab.send_button.isEnabled(), timeout=120_000)


def test_ab_chat_answers_side_by_side_and_keeps_the_vote(
        qtbot: QtBot, store: Storage, tiny_evaluation: Evaluation) -> None:
    page = _show(qtbot, store, tiny_evaluation)
    panel = page.compare
    ab = panel.ab_chat
    try:
        page.set_hardware(full_profile())  # this machine: two tiny models fit together
        ab.max_tokens = 12
        assert ab.first.currentText() == "tiny-llama-f32" and ab.second.currentText() == "tiny-Q2_K"
        _round(qtbot, ab, "Hello there")
        assert len(ab.clients) == 2 and "Both loaded together" in ab.mode.text()
        for side in ab.sides:
            assert side.state == "done" and side.reply
            assert "Hello there" in side.view.toPlainText()
            assert side.view.toPlainText().endswith(side.reply)
            assert "tok/s" in side.metrics.text()
        assert [h.text() for h in ab.headers] == ["A", "B"]  # blind until the vote
        assert all(b.isEnabled() for b in ab.vote_buttons.values())
        winner = ab.sides[0].name
        ab.vote_buttons["A"].click()
        assert store.evaluation(ab.evaluation_id).votes == {winner: 1}
        assert ab.headers[0].text() == f"A: {winner}"
        assert panel.votes.text() == f"A/B votes: {winner} 1"
        assert not any(b.isEnabled() for b in ab.vote_buttons.values())
        assert json.loads(panel.export_text("json"))["votes"] == {winner: 1}
        # a second round continues both conversations
        _round(qtbot, ab, "And then?")
        assert all(len(s.history) == 4 for s in ab.sides)
        ab.vote_buttons[TIE].click()
        assert store.evaluation(ab.evaluation_id).votes == {winner: 1, TIE: 1}
    finally:
        page.shutdown()


def _cached(side_metrics: str) -> tuple[int, int] | None:
    """(cached, prompt tokens) from a side's metrics line, or None when it names none."""
    match = re.search(r"([\d,]+) of ([\d,]+) prompt tokens cached", side_metrics)
    return (int(match[1].replace(",", "")), int(match[2].replace(",", ""))) if match else None


@pytest.fixture
def ab_together(qtbot: QtBot, store: Storage, tiny_evaluation: Evaluation
                ) -> Iterator[tuple[ABChat, list[ReplyDone]]]:
    """The A/B chat after a first round with both models loaded together, and the ends of
    the read-aheads that come after it (as their engines report them)."""
    page = _show(qtbot, store, tiny_evaluation)
    ab = page.compare.ab_chat
    try:
        page.set_hardware(full_profile())  # both loaded together
        ab.max_tokens = 8
        _round(qtbot, ab, "Hello there")  # the first round loads both engines
        ended: list[ReplyDone] = []
        for client in ab.clients:
            client.read_ahead_ended.connect(ended.append)
        yield ab, ended
    finally:
        page.shutdown()


@pytest.mark.parametrize("read_ahead", [True, False], ids=["reading ahead", "setting off"])
def test_ab_chat_reads_the_next_prompt_ahead_on_both_sides_while_it_is_typed(
        qtbot: QtBot, ab_together: tuple[ABChat, list[ReplyDone]], read_ahead: bool) -> None:
    ab, ended = ab_together
    ab.settings.read_ahead = read_ahead
    qtbot.keyClicks(ab.prompt, "Tell me about rivers and the valleys they cut")
    if read_ahead:  # after the pause, each engine reads the prompt
        qtbot.waitUntil(lambda: len(ended) == 2, timeout=60_000)
        assert all(e.finish_reason == "length" and e.text == "" for e in ended)
    else:
        qtbot.wait(3 * READ_AHEAD_PAUSE_MS)
        assert not ended and not any(c.reading_ahead for c in ab.clients)
    _round(qtbot, ab, ab.prompt.text())
    for side in ab.sides:
        assert side.state == "done" and len(side.history) == 4
        cached = _cached(side.metrics.text())
        assert cached is not None  # the first round's turn is kept either way
        if read_ahead:  # the whole prompt was read: the round decoded nothing more
            assert cached[0] == cached[1]
        else:
            assert cached[0] < cached[1]


def test_ab_chat_reads_a_prompt_typed_during_a_round_once_the_round_is_over(
        qtbot: QtBot, ab_together: tuple[ABChat, list[ReplyDone]]) -> None:
    ab, ended = ab_together
    ab.prompt.setText("And then?")
    ab.send()
    qtbot.keyClicks(ab.prompt, "What is a delta")  # no engine event handled yet
    assert ab.busy and not ab._read_ahead_timer.isActive()  # nothing read meanwhile
    qtbot.waitUntil(lambda: ab.send_button.isEnabled(), timeout=120_000)
    qtbot.waitUntil(lambda: len(ended) == 2, timeout=60_000)
    assert all(e.finish_reason == "length" for e in ended)


def test_ab_chat_takes_turns_when_both_do_not_fit(
        qtbot: QtBot, store: Storage, tiny_evaluation: Evaluation) -> None:
    page = _show(qtbot, store, tiny_evaluation)
    ab = page.compare.ab_chat
    try:
        profile = full_profile()
        page.set_hardware(replace(profile, ram_available=RAM_RESERVE + 1024))
        ab.max_tokens = 8
        ab.blind.setChecked(False)
        _round(qtbot, ab, "Hello")
        assert len(ab.clients) == 1 and "one after the other" in ab.mode.text()
        assert [h.text() for h in ab.headers] == [f"A: {ab.sides[0].name}",
                                                  f"B: {ab.sides[1].name}"]
        loads: list[str] = []
        ab.clients[0].loaded.connect(lambda loaded: loads.append(loaded.path))
        # a pause in typing reads nothing ahead: only the variant loaded (B) could
        ended: list[object] = []
        ab.clients[0].read_ahead_ended.connect(ended.append)
        qtbot.keyClicks(ab.prompt, "Again")
        qtbot.wait(3 * READ_AHEAD_PAUSE_MS)
        assert not ended and not ab.clients[0].reading_ahead
        _round(qtbot, ab, "Again")
        # the variant still loaded (B) answered first, so only A was loaded again
        assert loads == [ab.sides[0].path]
        assert all(s.state == "done" and len(s.history) == 4 for s in ab.sides)
        # what each side's first token had to read is shown: B kept the first round, A not
        cached = _cached(ab.sides[1].metrics.text())
        assert cached is not None and 0 < cached[0] < cached[1]
        assert _cached(ab.sides[0].metrics.text()) is None
    finally:
        page.shutdown()
