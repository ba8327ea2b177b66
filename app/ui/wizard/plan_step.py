"""Step 2: the plan. The types worth trying on this machine, pre-ticked, each with its size
(llama.cpp's dry run), memory at the chosen context, expected speed and the quality to expect
for its bits (labelled as an expectation); disk needed against disk free; the options, and the
time each evaluation length takes here, predicted from this machine's measured speed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QRadioButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import expected_quality
from app.core.bandwidth import bandwidth
from app.core.hardware import HardwareProfile
from app.core.report import DEFAULT_KLD_BUDGET
from app.core.units import format_bytes, format_duration
from app.jobs.probe import full_profile
from app.jobs.task import Task
from app.pipeline import plans, wizard
from app.pipeline.events import PipelineError
from app.pipeline.steps import Rates
from app.pipeline.texts import TextSource
from app.pipeline.wizard import Source, Timing, TypeOption
from app.ui.automix_choice import AutomixChoice
from app.ui.widgets import Card, set_role, text_label

COLUMNS = ("", "Type", "Size", "Bits/weight", "Memory", "Fits", "Expected speed",
           "Expected KL divergence (published measurements)")
CONTEXTS = (2048, 4096, 8192, 16384, 32768)
LENGTH_WORDS = {"quick": "Quick", "standard": "Standard", "thorough": "Thorough"}
_GREY = QColor("#8a8a8a")


@dataclass(frozen=True)
class _Computed:
    generation: int  # which request this answers
    profile: HardwareProfile
    options: list[TypeOption]
    rates: Rates | None
    tokens: dict[str, int]


class PlanStep(QWidget):
    """The plan's table and options; ``ready`` says whether a run can start."""

    ready = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source: Source | None = None
        self.profile: HardwareProfile | None = None
        self.options: list[TypeOption] = []
        self.rates: Rates | None = None
        self.tokens: dict[str, int] = {}
        self.timing: Timing | None = None
        self.calibration_file = ""
        self._generation = 0
        layout = QVBoxLayout(self)

        types = Card("Types to make")
        self.intro = text_label("", "Muted")
        types.body.addWidget(self.intro)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.horizontalHeader().setSectionResizeMode(len(COLUMNS) - 1,
                                                           QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(200)
        quality = self.table.horizontalHeaderItem(len(COLUMNS) - 1)
        if quality is not None:
            quality.setToolTip("An expectation, not a measurement of your model: mean KL "
                               "divergence against the 16-bit original.\n"
                               + expected_quality.sources_text())
        self.table.itemChanged.connect(lambda _item: self._update_summary())
        types.body.addWidget(self.table, 1)
        layout.addWidget(types, 1)

        options = Card("Options")
        row = QHBoxLayout()
        self.imatrix = QCheckBox("Calibrate with an importance matrix")
        self.imatrix.setChecked(True)
        self.imatrix.setToolTip("The model reads a text and records which inputs of each layer "
                                "matter most; the quantizer spends its precision there. "
                                "Improves 2- to 4-bit types; the IQ2 types need it.")
        self.calibration = QComboBox()
        self.calibration.addItems(["bundled calibration text", "my own text file…"])
        self.calibration.activated.connect(self._calibration_chosen)
        row.addWidget(self.imatrix)
        row.addWidget(self.calibration)
        row.addStretch()
        row.addWidget(QLabel("Memory at a context of"))
        self.context = QComboBox()
        for n in CONTEXTS:
            self.context.addItem(f"{n:,} tokens", n)
        self.context.setCurrentIndex(1)
        row.addWidget(self.context)
        options.body.addLayout(row)
        high_row = QHBoxLayout()
        self.keep_high = QCheckBox("Keep the output layer and token embeddings at Q8_0 (a "
                                   "little larger; helps most at 2 and 3 bits)")
        high_row.addWidget(self.keep_high)
        high_row.addStretch()
        options.body.addLayout(high_row)
        length_row = QHBoxLayout()
        length_row.addWidget(QLabel("Evaluation:"))
        self.lengths = QButtonGroup(self)
        self.length_buttons: dict[str, QRadioButton] = {}
        for i, length in enumerate(plans.EVAL_LENGTHS):
            button = QRadioButton(LENGTH_WORDS[length])
            self.lengths.addButton(button, i)
            self.length_buttons[length] = button
            length_row.addWidget(button)
        self.length_buttons["quick"].setChecked(True)
        length_row.addStretch()
        options.body.addLayout(length_row)
        budget_row = QHBoxLayout()
        budget_row.addWidget(QLabel("Recommend the smallest type whose KL divergence is at "
                                    "most"))
        self.budget = QDoubleSpinBox()
        self.budget.setDecimals(3)
        self.budget.setRange(0.001, 5.0)
        self.budget.setSingleStep(0.01)
        self.budget.setValue(DEFAULT_KLD_BUDGET)
        self.budget.setToolTip("The recommendation is the smallest type whose measured KLD "
                               "stays within this. 0.05 is a small loss (Q4_K_M on Llama 3 8B "
                               "is about 0.03).")
        budget_row.addWidget(self.budget)
        budget_row.addStretch()
        options.body.addLayout(budget_row)
        self.automix = AutomixChoice()
        self.automix.setToolTip("Adds an auto mix at the chosen size to the run, evaluated "
                                "beside that stock type (made too if it is not ticked).")
        options.body.addWidget(self.automix)
        layout.addWidget(options)

        self.summary = text_label("")
        layout.addWidget(self.summary)
        self.lengths.idClicked.connect(lambda _i: self._update_summary())
        self.automix.changed.connect(self._update_summary)
        self.imatrix.toggled.connect(lambda _on: self.recompute())
        self.context.currentIndexChanged.connect(lambda _i: self.recompute())

    # --- inputs ----------------------------------------------------------------------------

    def set_hardware(self, profile: HardwareProfile) -> None:
        self.profile = profile

    def set_source(self, source: Source) -> None:
        """Plan for ``source`` (its speed is measured once, the table computed again when an
        option changes)."""
        if self.source is not None and source.location == self.source.location:
            return
        self.source = source
        self.rates, self.tokens = None, {}
        self.recompute()

    def _calibration_chosen(self, index: int) -> None:
        if index == 1:
            path, _ = QFileDialog.getOpenFileName(self, "Calibration text", "",
                                                  "Text (*.txt *.md);;All files (*)")
            if path:
                self.calibration_file = path
            else:
                self.calibration.setCurrentIndex(0)

    def calibration_text(self) -> TextSource:
        if self.calibration.currentIndex() == 1 and self.calibration_file:
            return TextSource(path=self.calibration_file)
        return TextSource.calibration()

    # --- computing -------------------------------------------------------------------------

    def recompute(self) -> None:
        """Ask for the table again in the background (the latest answer wins)."""
        source = self.source
        if source is None:
            return
        self._generation += 1
        generation = self._generation
        profile, rates = self.profile, self.rates
        n_ctx = int(self.context.currentData())
        imatrix = self.imatrix.isChecked()
        calibration = self.calibration_text()
        self.intro.setText("Measuring this machine on the model and asking llama.cpp how large "
                           "each type would be…" if rates is None else "Updating…")
        self.ready.emit(False)

        tokens = self.tokens

        def compute() -> _Computed | str:  # the reason when no plan can be made
            try:
                found_profile = profile or full_profile()
                options = wizard.type_options(source, found_profile, n_ctx=n_ctx,
                                              imatrix=imatrix, bandwidth=bandwidth(found_profile))
                found_rates, found_tokens = (rates, tokens) if rates is not None else \
                    wizard.measure_rates(source, calibration)
            except PipelineError as exc:
                return str(exc)
            return _Computed(generation, found_profile, options, found_rates, found_tokens)

        # bound methods, not lambdas: if the page is gone when the answer comes, Qt drops them
        task = Task(compute)
        task.finished.connect(self._computed)
        task.failed.connect(self._failed)
        task.start()

    def _computed(self, done: _Computed | str) -> None:
        if isinstance(done, str):
            self._failed(done)
            return
        if done.generation != self._generation:
            return  # an option changed meanwhile; a newer answer is coming
        self.profile, self.options, self.rates, self.tokens = (done.profile, done.options,
                                                               done.rates, done.tokens)
        self._fill()

    def _failed(self, message: str) -> None:
        self.intro.setText(f"The plan could not be made: {message}")

    def _fill(self) -> None:
        source = self.source
        assert source is not None
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.options))
        for i, option in enumerate(self.options):
            check = QTableWidgetItem()
            flags = Qt.ItemFlag.ItemIsUserCheckable
            if option.allowed:
                flags |= Qt.ItemFlag.ItemIsEnabled
            check.setFlags(flags)
            check.setCheckState(Qt.CheckState.Checked if option.ticked else
                                Qt.CheckState.Unchecked)
            self.table.setItem(i, 0, check)
            speed = f"~{option.tokens_per_second:.0f} tokens/s" if option.tokens_per_second \
                else "–"
            memory = format_bytes(option.memory) if option.memory else "–"
            size = "after conversion" if not option.size else \
                format_bytes(option.size) + ("" if option.exact else " (est.)")
            cells = (option.quant, size,
                     f"{option.bits_per_weight:.2f}", memory, option.badge, speed,
                     option.expectation)
            for j, text in enumerate(cells, start=1):
                item = QTableWidgetItem(text)
                if not option.allowed:
                    item.setForeground(QBrush(_GREY))
                    item.setToolTip(option.why_not)
                self.table.setItem(i, j, item)
            if not option.allowed:
                check.setToolTip(option.why_not)
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)
        ticked = sum(o.ticked for o in self.options)
        intro = (f"{ticked} types are ticked: the spread worth trying on this machine. Sizes "
                 "are llama.cpp's own dry run; expected speed is from your memory bandwidth.")
        refused = [o for o in self.options if not o.allowed]
        if refused:
            intro += (f" Greyed types are not offered: {refused[0].why_not} (hover a row for "
                      "its reason.)")
        self.intro.setText(intro)
        self._update_summary()

    # --- the summary ------------------------------------------------------------------------

    def ticked(self) -> list[TypeOption]:
        found = []
        for i in range(self.table.rowCount()):
            item = self.table.item(i, 0)
            if item is not None and item.checkState() == Qt.CheckState.Checked:
                found.append(self.options[i])
        return found

    def length(self) -> str:
        return next(k for k, b in self.length_buttons.items() if b.isChecked())

    def _update_summary(self) -> None:
        source = self.source
        if source is None or not self.options:
            return
        ticked = self.ticked()
        rates = self.rates or Rates()
        self.timing = wizard.predict(source, ticked, rates, self.tokens)
        imatrix = self.imatrix.isChecked()
        for length, button in self.length_buttons.items():
            chunks = wizard.eval_chunks(length, self.tokens.get("evaluation"))
            button.setText(f"{LENGTH_WORDS[length]}: {chunks} chunks, about "
                           f"{format_duration(self.timing.evaluate[length])}")
        needed = wizard.disk_needed(source, ticked)
        out_dir = wizard.default_out_dir(source)
        free = wizard.disk_free(out_dir)
        total = self.timing.total(self.length(), imatrix)
        enough = needed <= free
        set_role(self.summary, "" if enough else "Warning")
        mix = self.automix.chosen()
        self.summary.setText(
            f"{len(ticked)} types · writes about {format_bytes(needed)} to {out_dir} "
            f"({format_bytes(free)} free) · about {format_duration(total)} on this machine"
            + (f" · plus an auto mix at {mix[0].label} ({mix[1]}; not in these estimates)"
               if mix else "")
            + ("" if enough else " — not enough free disk space: untick some types or free "
               "space first."))
        self.ready.emit(bool(ticked) and enough)

    def choice(self, out_dir: Path | None = None) -> wizard.WizardChoice:
        """What the user chose, for ``wizard.wizard_plan``."""
        assert self.source is not None
        return wizard.WizardChoice(
            self.source, tuple(o.quant for o in self.ticked()),
            imatrix=self.imatrix.isChecked(), calibration=self.calibration_text(),
            evaluation=self.length(), kld_budget=self.budget.value(),
            keep_high_precision=self.keep_high.isChecked(), out_dir=out_dir,
            rates=self.rates, text_tokens=self.tokens)
