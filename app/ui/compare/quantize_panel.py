"""Quantize a model to several types in one run, optionally calibrated with an importance matrix.

The panel collects the choices and shows the run; the run itself is the pipeline's
(``app.pipeline.plans.quantize_plan``), the same one ``quantdesk quantize`` uses, stored and
resumable. The source is a GGUF (F16/BF16/F32 is best) or a Hugging Face folder, converted to
F16 first. A source that is already quantized (the embedded model is Q4_1) gets an F16 copy
made first, which becomes the reference for comparing; types that would be as large as it or
larger are not made, because re-quantizing a low-bit file can only add error.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core import paths, quant_types
from app.core.embedded import embedded_model_path
from app.core.storage import Storage
from app.core.units import format_duration
from app.jobs.pipeline_job import PipelineJob
from app.jobs.task import Task
from app.pipeline import automix, plans, wizard
from app.pipeline import events as ev
from app.pipeline.events import PipelineError
from app.pipeline.texts import TextSource
from app.ui.automix_choice import AutomixChoice
from app.ui.widgets import Card, text_label

TARGETS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_XS")
CHECKED = {"Q8_0", "Q4_K_M", "Q2_K"}
CALIBRATION = ("None", "Bundled calibration text", "My own text file…")


class QuantizePanel(QWidget):
    """Source, targets, calibration, output folder; Start/Cancel; progress and results."""

    compare_requested = Signal(str, list)  # reference path, candidate paths

    def __init__(self, store: Storage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.job: PipelineJob | None = None
        self.run_id = 0
        self.mix_stock: str | None = None
        self.outputs: list[Path] = []
        self.reference: Path | None = None
        layout = QVBoxLayout(self)

        source = Card("1. Source model")
        row = QHBoxLayout()
        self.source = QLineEdit()
        self.source.setPlaceholderText("A GGUF file (F16 is best) or a Hugging Face model folder")
        embedded = QPushButton("Embedded model")
        embedded.setToolTip("SmolLM2-135M-Instruct, which comes with QuantDesk")
        embedded.clicked.connect(self._use_embedded)
        browse = QPushButton("GGUF file…")
        browse.clicked.connect(self._pick_file)
        folder = QPushButton("Hugging Face folder…")
        folder.clicked.connect(self._pick_folder)
        row.addWidget(self.source, 1)
        row.addWidget(embedded)
        row.addWidget(browse)
        row.addWidget(folder)
        source.body.addLayout(row)
        self.convert_note = text_label("", "Muted")
        source.body.addWidget(self.convert_note)
        layout.addWidget(source)

        targets = Card("2. Types to make")
        grid = QGridLayout()
        self.checks: dict[str, QCheckBox] = {}
        for i, name in enumerate(TARGETS):
            qt = quant_types.by_name(name)
            box = QCheckBox(f"{name}  ({qt.bits_per_weight:g} bits)")
            box.setToolTip(qt.description)
            box.setChecked(name in CHECKED)
            self.checks[name] = box
            grid.addWidget(box, i // 4, i % 4)
        targets.body.addLayout(grid)
        self.keep_sensitive = QCheckBox("Keep sensitive tensors (attn_v, ffn_down) at Q6_K")
        self.keep_sensitive.setToolTip("Mixed precision: the layers most hurt by quantization "
                                       "keep more bits; the file grows a little.")
        targets.body.addWidget(self.keep_sensitive)
        self.automix = AutomixChoice()
        targets.body.addWidget(self.automix)
        layout.addWidget(targets)

        calib = Card("3. Calibration (importance matrix)")
        self.calibration = QComboBox()
        self.calibration.addItems(CALIBRATION)
        self.calibration.setCurrentIndex(1)
        self.calibration.currentIndexChanged.connect(self._calibration_changed)
        self.calibration_file = ""
        calib.body.addWidget(self.calibration)
        calib.body.addWidget(text_label(
            "The model reads a text and records which inputs of each layer matter most; the "
            "quantizer then spends its precision there. IQ2 types need it; it improves Q3/Q4.",
            "Muted"))
        layout.addWidget(calib)

        run = Card("4. Run")
        out_row = QHBoxLayout()
        self.out_dir = QLineEdit(str(paths.models_dir()))
        out_row.addWidget(text_label("Save to:"))
        out_row.addWidget(self.out_dir, 1)
        run.body.addLayout(out_row)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Quantize")
        self.start_button.setObjectName("Primary")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.compare_button = QPushButton("Compare the results")
        self.compare_button.setEnabled(False)
        self.compare_button.clicked.connect(self._compare)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch()
        buttons.addWidget(self.compare_button)
        run.body.addLayout(buttons)
        self.progress = QProgressBar()
        self.status = text_label("", "Muted")
        self.results = QListWidget()
        self.results.setMaximumHeight(140)
        run.body.addWidget(self.progress)
        run.body.addWidget(self.status)
        run.body.addWidget(self.results)
        layout.addWidget(run)
        layout.addStretch()

    # ------------------------------------------------------------------ inputs

    def _use_embedded(self) -> None:
        path = embedded_model_path()
        if path is None:
            self.convert_note.setText("The embedded model is not installed.")
            return
        self.source.setText(str(path))

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Source GGUF", "", "GGUF models (*.gguf)")
        if path:
            self.source.setText(path)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Hugging Face model folder")
        if folder:
            self.source.setText(folder)
            task = Task(wizard.converter_problem)
            task.finished.connect(self._converter_checked)
            task.start()

    def _converter_checked(self, problem: str | None) -> None:
        self.convert_note.setText(problem or "The folder is converted to F16 GGUF first.")

    def _calibration_changed(self, index: int) -> None:
        if index == 2:
            path, _ = QFileDialog.getOpenFileName(self, "Calibration text", "",
                                                  "Text (*.txt *.md);;All files (*)")
            if path:
                self.calibration_file = path
            else:
                self.calibration.setCurrentIndex(1)

    def selected_types(self) -> list[str]:
        return [name for name, box in self.checks.items() if box.isChecked()]

    # ------------------------------------------------------------------ the run

    def _calibration(self) -> TextSource | None:
        index = self.calibration.currentIndex()
        if index == 0:
            return None
        return TextSource(path=self.calibration_file) if index == 2 else \
            TextSource.calibration()

    def _plan(self, source: Path, types: list[str]) -> plans.RunPlan:
        """The run: for an already quantized GGUF, an F16 reference first (see the module's
        docstring); raises PipelineError for a source that cannot be used."""
        out_dir = Path(self.out_dir.text().strip() or paths.models_dir())
        overrides = (("attn_v", "Q6_K"), ("ffn_down", "Q6_K")) if (
            self.keep_sensitive.isChecked()) else ()
        if source.is_dir():
            plan = plans.quantize_plan(source, types, out_dir, calibration=self._calibration(),
                                       overrides=overrides)
            chosen = self.automix.chosen()
            return automix.with_automix(plan, *chosen) if chosen else plan
        found = wizard.from_gguf(source)
        steps: list[plans.StepSpec] = []
        if found.quantized:
            reference = plans.reference_path(out_dir, found.model_name)
            steps.append(plans.dequantize_step(source, reference, found.precision))
            refused = wizard.refusals(found, wizard.predicted_sizes(found, types))
            for quant, why in refused.items():
                self.results.addItem(f"⚠ {quant} not made: {why}")
            types = [t for t in types if t not in refused]
            if not types:
                raise PipelineError(f"Every type you ticked is as large as the "
                                    f"{found.precision} file or larger; tick smaller ones.")
            source = reference
        plan = plans.quantize_plan(source, types, out_dir, calibration=self._calibration(),
                                   overrides=overrides)
        plan = plans.RunPlan(plan.kind, plan.title, (*steps, *plan.steps), plan.options)
        chosen = self.automix.chosen()
        return automix.with_automix(plan, *chosen) if chosen else plan

    def start(self) -> None:
        source = Path(self.source.text().strip())
        if not self.source.text().strip() or not source.exists():
            self.status.setText("Choose a source model first: a GGUF file or a model folder.")
            return
        if not self.selected_types() and self.automix.chosen() is None:
            self.status.setText("Tick at least one type to make, or the auto mix.")
            return
        self.outputs = []
        self.results.clear()
        try:
            plan = self._plan(source, self.selected_types())
        except PipelineError as exc:
            self.status.setText(f"Stopped: {exc}")
            return
        self.reference = next((Path(s.params["source"]) for s in plan.steps
                               if s.kind == "quantize"), None)
        self.run_id = plans.create(self.store, plan)
        self.mix_stock = (plan.options.get("automix") or {}).get("stock")
        self.job = PipelineJob(self.run_id, self)
        self.job.progress.connect(self._on_event)
        self.job.finished.connect(self._on_finished)
        self.job.failed.connect(self._on_failed)
        self.job.cancelled.connect(self._on_cancelled)
        self._set_running(True)
        self.status.setText("Starting…")
        self.job.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_event(self, event: object) -> None:
        if isinstance(event, ev.RunProgress):
            self.progress.setRange(0, 1000)
            self.progress.setValue(round(event.fraction * 1000))
        elif isinstance(event, ev.StepProgress):
            eta = f" · {format_duration(event.eta_seconds)} left" if event.eta_seconds else ""
            self.status.setText(f"{event.message}{eta}")
        elif isinstance(event, ev.StepNote):
            self.results.addItem(f"⚠ {event.message}")
        elif isinstance(event, ev.StepFinished):
            self._finished_step(event)

    def _finished_step(self, event: ev.StepFinished) -> None:
        out = event.outputs
        how = "made earlier, reused" if event.reused else f"{event.seconds:.1f} s"
        if event.key.startswith("quantize:") or event.key == "automix:quantize":
            self.outputs.append(Path(out["path"]))
            self.results.addItem(f"✓ {out['quant']}: {Path(out['path']).name} "
                                 f"({out['size'] / 2**20:,.1f} MiB, {how})")
        elif event.key == "imatrix":
            self.results.addItem(f"✓ importance matrix from {out['tokens']:,} tokens ({how})")
        elif event.key in ("convert", "reference"):
            self.results.addItem(f"✓ reference {Path(out['path']).name} ({how})")
        elif event.key == "automix:allocate":
            self.results.addItem(f"✓ auto mix recipe, {out['bits_per_weight']:.2f} bits per "
                                 f"weight: {'; '.join(out['rules'][:4])}"
                                 f"{' …' if len(out['rules']) > 4 else ''} ({how})")
        elif event.key == "summary":
            self.results.addItem("✓ the auto mix evaluated beside the stock type")

    def _on_finished(self, _last: object) -> None:
        self._set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(f"Done: {len(self.outputs)} files in {self.out_dir.text()}.")
        if self.mix_stock:
            try:
                found = automix.result(self.store, self.run_id, self.mix_stock)
            except PipelineError as exc:
                self.results.addItem(f"⚠ {exc}")
            else:
                self.results.addItem(found.verdict())
                self.results.addItem("As llama-quantize arguments: "
                                     + found.recipe.command_line(imatrix="IMATRIX.gguf"))
        self.compare_button.setEnabled(bool(self.outputs) and self.reference is not None)

    def _on_failed(self, message: str) -> None:
        self._set_running(False)
        self.status.setText(f"Stopped: {message}")

    def _on_cancelled(self) -> None:
        self._set_running(False)
        self.status.setText("Cancelled; unfinished files were removed. Start again to go on "
                            "where it stopped.")

    def _compare(self) -> None:
        if self.reference is not None:
            self.compare_requested.emit(str(self.reference), [str(p) for p in self.outputs])

    def shutdown(self) -> None:
        """Cancel a running quantization (the window closes)."""
        if self.job is not None and self.job.running:
            self.job.cancel()

