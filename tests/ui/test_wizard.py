"""The quantize wizard driven as a person would, on the tiny model: source, plan, run, results,
and "Continue where you left off" after an interrupted run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.core import runs as R
from app.core.settings import Settings
from app.core.storage import Storage
from app.engine.probe import full_profile
from app.pipeline import events as ev
from app.pipeline import plans, wizard
from app.pipeline.runner import Runner
from app.ui.main_window import WIZARD, MainWindow
from app.ui.wizard.wizard_page import PLAN, RESULTS, RUN, SOURCE, WizardPage

TYPES = ("Q8_0", "Q4_0")


@pytest.fixture(scope="module")
def profile():  # the probe starts a child; once is enough
    return full_profile()


def _plan_for(qtbot: QtBot, page: WizardPage, source: Path, profile) -> None:
    """Choose ``source``, go to the plan, and tick exactly TYPES."""
    page.set_hardware(profile)
    page.source_step.select_path(str(source))
    qtbot.waitUntil(lambda: page.source is not None, timeout=30_000)
    assert page.next_button.isEnabled() and page.next_button.text() == "Next: plan"
    page.next_button.click()
    assert page.step == PLAN
    qtbot.waitUntil(lambda: page.next_button.isEnabled(), timeout=120_000)
    table = page.plan_step.table
    ticked = [table.item(i, 1).text() for i in range(table.rowCount())
              if table.item(i, 0).checkState() == Qt.CheckState.Checked]
    assert 1 <= len(ticked) <= wizard.DEFAULT_TICKED
    for i in range(table.rowCount()):
        wanted = table.item(i, 1).text() in TYPES
        table.item(i, 0).setCheckState(Qt.CheckState.Checked if wanted else
                                       Qt.CheckState.Unchecked)
    assert [o.quant for o in page.plan_step.ticked()] == list(TYPES)
    assert "about" in page.plan_step.summary.text()


def test_the_wizard_takes_a_newcomer_from_source_to_a_recommendation(
        qtbot: QtBot, store: Storage, tiny_model_f16: Path, profile) -> None:
    page = WizardPage(store, Settings(), has_embedded=True)
    qtbot.addWidget(page)
    assert page.step == SOURCE
    qtbot.waitUntil(lambda: page.source is not None, timeout=30_000)  # the embedded model
    assert page.source.quantized and "F16 copy" in page.source_step.notes.text()
    _plan_for(qtbot, page, tiny_model_f16, profile)
    # the plan shows each ticked type's real numbers
    options = {o.quant: o for o in page.plan_step.ticked()}
    assert options["Q8_0"].exact and options["Q8_0"].size > options["Q4_0"].size
    assert options["Q4_0"].memory and options["Q4_0"].expectation

    page.next_button.click()
    assert page.step == RUN and page.run_step.running
    assert not page.back_button.isVisible()  # no leaving a run that is going
    qtbot.waitUntil(lambda: page.step == RESULTS, timeout=180_000)
    steps = page.run_step.items
    assert all(item.text(0) == "✓" for item in steps.values())
    assert list(steps) == ["imatrix", "quantize:Q8_0", "quantize:Q4_0", "evaluate:reference",
                           "evaluate:Q8_0", "evaluate:Q4_0", "summary"]

    results = page.results_step
    assert results.table.rowCount() == 3
    pick = results.rows[results.recommended]
    assert results.table.item(results.recommended, 0).text().startswith("★")
    assert pick["quant"] in TYPES and pick["quant"] in results.headline.text()
    assert f"KLD {pick['kld']:.3f}" in results.detail.text()
    with qtbot.waitSignal(results.chat_requested) as chat:
        results.chat_button.click()
    assert chat.args == [pick["path"]]
    with qtbot.waitSignal(results.ab_requested) as ab:
        results.ab_button.click()
    assert ab.args[2] == pick["path"] and ab.args[1].endswith("tiny-llama-f16.gguf")
    html = results.export_html()
    assert "<table>" in html and "data:image/png;base64," in html
    # deleting a variant frees its bytes and leaves the others
    files = results.files
    labels = [files.item(i).text() for i in range(files.count())]
    assert any(label.startswith("the importance matrix") for label in labels)
    other = next(i for i in range(files.count())
                 if files.item(i).text().startswith(("Q8_0", "Q4_0"))
                 and "(recommended)" not in files.item(i).text())
    path = Path(files.item(other).data(Qt.ItemDataRole.UserRole)[0])
    files.item(other).setCheckState(Qt.CheckState.Checked)
    results.delete_ticked(confirm=False)
    assert not path.exists() and Path(pick["path"]).exists()
    assert "freed" in results.freed.text() and files.count() == len(labels) - 1


def test_an_interrupted_run_is_offered_and_continues_where_it_stopped(
        qtbot: QtBot, tiny_model_f16: Path, profile, engines: list,
        make_window: Callable[[Path | None], MainWindow]) -> None:
    store = Storage()
    choice = wizard.WizardChoice(wizard.from_gguf(tiny_model_f16), TYPES, evaluation="quick")
    run_id = plans.create(store, wizard.wizard_plan(choice))
    seen: list[ev.Event] = []
    with pytest.raises(ev.PipelineCancelled):  # stopped after the first quantization
        for event in Runner().run(run_id, cancel=lambda: any(
                isinstance(e, ev.StepFinished) and e.key == "quantize:Q8_0" for e in seen)):
            seen.append(event)
    finished_before = {s.key: s.finished_at for s in R.RunStore(store).steps(run_id)
                       if s.status == R.DONE}
    assert list(finished_before) == ["imatrix", "quantize:Q8_0"]

    window = make_window(None)
    banner = window.resume_banner
    assert banner.isVisibleTo(window) and "after 2 of 7 steps" in banner.text.text()
    banner.continue_button.click()
    page = window.wizard_page
    assert window.sidebar.currentItem().text() == WIZARD and page.step == RUN
    qtbot.waitUntil(lambda: page.step == RESULTS, timeout=180_000)
    reused = [key for key, item in page.run_step.items.items()
              if item.text(2) == "done earlier, reused"]
    assert reused == ["imatrix", "quantize:Q8_0"]
    after = {s.key: s.finished_at for s in R.RunStore(store).steps(run_id)}
    assert all(after[k] == t for k, t in finished_before.items())
    assert not banner.isVisibleTo(window)
    store.close()


def test_a_dismissed_run_is_not_offered_again(qtbot: QtBot, tiny_model_f16: Path,
                                              make_window: Callable[[Path | None], MainWindow]
                                              ) -> None:
    store = Storage()
    choice = wizard.WizardChoice(wizard.from_gguf(tiny_model_f16), ("Q8_0",))
    run_id = plans.create(store, wizard.wizard_plan(choice))
    R.RunStore(store).finish(run_id, R.FAILED, "disk full")
    window = make_window(None)
    assert "stopped with an error" in window.resume_banner.text.text()
    window.resume_banner.dismiss_button.click()
    assert not window.resume_banner.isVisibleTo(window)
    assert make_window(None).resume_banner.isHidden()
    store.close()


def test_the_models_page_opens_the_wizard_on_the_chosen_model(
        qtbot: QtBot, tiny_model_f16: Path, make_window: Callable[[Path | None], MainWindow]
        ) -> None:
    import shutil

    from app.core import paths

    copy = paths.models_dir() / "mine" / tiny_model_f16.name
    copy.parent.mkdir(parents=True)
    shutil.copy(tiny_model_f16, copy)
    window = make_window(None)
    models = window.models_page
    qtbot.waitUntil(lambda: any(e.path == copy for e in models.entries), timeout=30_000)
    models.table.selectRow(next(i for i, e in enumerate(models.entries) if e.path == copy))
    models.quantize_button.click()
    page = window.wizard_page
    assert window.sidebar.currentItem().text() == WIZARD and page.step == SOURCE
    qtbot.waitUntil(lambda: page.source is not None and page.source.location == str(copy),
                    timeout=30_000)
    assert page.source_step.file.text() == str(copy)
