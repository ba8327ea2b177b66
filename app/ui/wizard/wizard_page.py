"""The quantize-and-compare wizard: Source → Plan → Run → Results, one step on screen at a time.

The page only moves between steps and hands each one what the previous chose; the work is the
pipeline's (``app.pipeline.wizard``, run through ``app.jobs.pipeline_job``), so a run started
here can be resumed from the CLI and the other way round.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from app.core.hardware import HardwareProfile
from app.core.runs import RunStore
from app.core.settings import Settings
from app.core.storage import Storage
from app.pipeline import automix, plans, wizard
from app.pipeline import events as ev
from app.pipeline.events import PipelineError
from app.pipeline.wizard import Source
from app.ui.widgets import page_title, set_role, text_label
from app.ui.wizard.plan_step import PlanStep
from app.ui.wizard.results_step import ResultsStep
from app.ui.wizard.run_step import RunStep
from app.ui.wizard.source_step import SourceStep

SOURCE, PLAN, RUN, RESULTS = range(4)
STEP_NAMES = ("Source", "Plan", "Run", "Results")


class WizardPage(QWidget):
    """The wizard. Its results' actions leave it through the three signals."""

    chat_requested = Signal(str)
    ab_requested = Signal(int, str, str)
    default_requested = Signal(str)

    def __init__(self, store: Storage, settings: Settings, has_embedded: bool,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.source: Source | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.addWidget(page_title("Quantize wizard"))
        layout.addWidget(text_label(
            "Find the best quantization of a model for this machine: QuantDesk makes the types "
            "worth trying, measures each against the original, and tells you which to keep "
            "and why.", "Muted"))
        crumbs = QHBoxLayout()
        self.crumbs: list[QLabel] = []
        for i, name in enumerate(STEP_NAMES):
            label = QLabel(f"{i + 1}. {name}")
            self.crumbs.append(label)
            crumbs.addWidget(label)
            if i < len(STEP_NAMES) - 1:
                crumbs.addWidget(QLabel("›"))
        crumbs.addStretch()
        layout.addLayout(crumbs)

        self.stack = QStackedWidget()
        self.source_step = SourceStep(settings, has_embedded)
        self.plan_step = PlanStep()
        self.run_step = RunStep(store)
        self.results_step = ResultsStep(store)
        for step in (self.source_step, self.plan_step, self.run_step, self.results_step):
            self.stack.addWidget(step)
        layout.addWidget(self.stack, 1)

        nav = QHBoxLayout()
        self.back_button = QPushButton("Back")
        self.back_button.clicked.connect(self.back)
        self.message = text_label("", "Warning")
        self.next_button = QPushButton("Next")
        self.next_button.setObjectName("Primary")
        self.next_button.clicked.connect(self.next)
        nav.addWidget(self.back_button)
        nav.addWidget(self.message, 1)
        nav.addWidget(self.next_button)
        layout.addLayout(nav)

        self.source_step.resolved.connect(self._source_resolved)
        self.run_step.finished.connect(self._run_finished)
        self.run_step.running_changed.connect(lambda _running: self._update_nav())
        self.results_step.chat_requested.connect(self.chat_requested)
        self.results_step.ab_requested.connect(self.ab_requested)
        self.results_step.default_requested.connect(self.default_requested)
        self.results_step.start_over.connect(lambda: self.go(SOURCE))
        self._plan_ready = False
        self.plan_step.ready.connect(self._set_plan_ready)
        self.go(SOURCE)

    # --- navigation -----------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.stack.currentIndex()

    def go(self, step: int) -> None:
        self.stack.setCurrentIndex(step)
        for i, label in enumerate(self.crumbs):
            set_role(label, "StepCurrent" if i == step else "StepOther")
        self.message.setText("")
        self._update_nav()

    def _update_nav(self) -> None:
        step = self.step
        running = self.run_step.running
        self.back_button.setVisible(step == PLAN or (step == RUN and not running))
        self.next_button.setVisible(step in (SOURCE, PLAN))
        if step == SOURCE:
            self.next_button.setText("Next: plan")
            self.next_button.setEnabled(self.source is not None)
        elif step == PLAN:
            self.next_button.setText("Start")
            self.next_button.setEnabled(self._plan_ready)

    def _set_plan_ready(self, ready: bool) -> None:
        self._plan_ready = ready
        self._update_nav()

    def back(self) -> None:
        if self.step > SOURCE and not self.run_step.running:
            self.go(PLAN if self.step == RUN else self.step - 1)

    def next(self) -> None:
        if self.step == SOURCE and self.source is not None:
            self.plan_step.set_source(self.source)
            self.go(PLAN)
        elif self.step == PLAN:
            self.start_run()

    # --- the run -------------------------------------------------------------------------

    def set_hardware(self, profile: HardwareProfile) -> None:
        self.plan_step.set_hardware(profile)

    def _source_resolved(self, source: Source | None) -> None:
        self.source = source
        self._update_nav()

    def start_from(self, path: str) -> None:
        """Open on the Source step with ``path`` chosen (from the Models page)."""
        self.go(SOURCE)
        self.source_step.select_path(path)

    def start_run(self) -> None:
        """Store the planned run and start it."""
        try:
            plan = wizard.wizard_plan(self.plan_step.choice())
            mix = self.plan_step.automix.chosen()
            if mix is not None:
                plan = automix.with_automix(plan, *mix)
        except PipelineError as exc:
            self.message.setText(str(exc))
            return
        run_id = plans.create(self.store, plan)
        self.go(RUN)
        self.run_step.start(run_id)

    def resume(self, run_id: int) -> None:
        """Continue an interrupted run where it stopped."""
        self.go(RUN)
        self.run_step.start(run_id)

    def _run_finished(self, finished: ev.RunFinished) -> None:
        summary = finished.outputs.get("summary")
        if summary is None:  # a run without an evaluation (a plain quantize run resumed)
            return
        record = RunStore(self.store).run(finished.run_id)
        budget = float(record.options.get("kld_budget", 0.05))
        self.results_step.show_run(finished.run_id, int(summary["evaluation_id"]), budget)
        self.go(RESULTS)

    def shutdown(self) -> None:
        self.run_step.shutdown()
