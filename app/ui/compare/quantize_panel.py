"""Quantize a model to several types in one job, optionally calibrated with an importance matrix.

The source is a GGUF (F16/BF16/F32 is best) or a Hugging Face folder, converted to F16 first
(that needs the ``convert`` extra; the panel says how to add it when it is missing). With
calibration on, an importance matrix is computed from the bundled calibration text (or the
user's file) before quantizing, and reused for every target type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

from app.core import paths, quant_types, resources
from app.engine import convert as convert_mod
from app.engine import imatrix as imatrix_mod
from app.engine import quantize as quantize_mod
from app.engine.events import Progress
from app.jobs.engine_job import EngineJob
from app.ui.widgets import Card, text_label

TARGETS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_XS")
CHECKED = {"Q8_0", "Q4_K_M", "Q2_K"}
CALIBRATION = ("None", "Bundled calibration text", "My own text file…")


class QuantizePanel(QWidget):
    """Source, targets, calibration, output folder; Start/Cancel; progress and results."""

    compare_requested = Signal(str, list)  # reference path, candidate paths

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job: EngineJob | None = None
        self.outputs: list[Path] = []
        layout = QVBoxLayout(self)

        source = Card("1. Source model")
        row = QHBoxLayout()
        self.source = QLineEdit()
        self.source.setPlaceholderText("A GGUF file (F16 is best) or a Hugging Face model folder")
        browse = QPushButton("GGUF file…")
        browse.clicked.connect(self._pick_file)
        folder = QPushButton("Hugging Face folder…")
        folder.clicked.connect(self._pick_folder)
        row.addWidget(self.source, 1)
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

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Source GGUF", "", "GGUF models (*.gguf)")
        if path:
            self.source.setText(path)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Hugging Face model folder")
        if folder:
            self.source.setText(folder)
            missing = convert_mod.missing_requirements()
            self.convert_note.setText(
                "The folder is converted to F16 GGUF first." if not missing else
                f"Converting needs the converter, which is not installed. "
                f"{convert_mod.INSTALL_HINT}")

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

    # ------------------------------------------------------------------ the job

    def _plan(self) -> Callable[[Callable[[], bool]], Iterator[Any]]:
        source = Path(self.source.text().strip())
        out_dir = Path(self.out_dir.text().strip() or paths.models_dir())
        types = self.selected_types()
        calibration = self.calibration.currentIndex()
        calib_file = self.calibration_file
        overrides = (("attn_v", "Q6_K"), ("ffn_down", "Q6_K")) if (
            self.keep_sensitive.isChecked()) else ()

        def run(cancel: Callable[[], bool]) -> Iterator[Any]:
            src = source
            if src.is_dir():
                f16 = out_dir / f"{src.name}-F16.gguf"
                yield from convert_mod.convert(src, f16, "F16", cancel=cancel)
                src = f16
            stem = quant_types.without_name(src.stem)
            imatrix_path = None
            if calibration:
                text = (Path(calib_file).read_text(encoding="utf-8") if calibration == 2
                        else resources.calibration_text())
                imatrix_path = out_dir / f"{stem}.imatrix.gguf"
                yield from imatrix_mod.compute(src, text, imatrix_path, cancel=cancel,
                                               dataset=Path(calib_file).name if calibration == 2
                                               else "quantdesk-calibration")
            targets = [(quantize_mod.QuantizeOptions(
                t, overrides=overrides, allow_requantize=True,
                imatrix=str(imatrix_path) if imatrix_path else None),
                out_dir / f"{stem}-{t}{'-imat' if imatrix_path else ''}.gguf") for t in types]
            yield ("source", src)
            yield from quantize_mod.quantize_many(src, targets, cancel)

        return run

    def start(self) -> None:
        source = Path(self.source.text().strip())
        if not source.exists():
            self.status.setText("Choose a source model first: a GGUF file or a model folder.")
            return
        if not self.selected_types():
            self.status.setText("Tick at least one type to make.")
            return
        self.outputs = []
        self.reference: Path | None = source if source.is_file() else None
        self.results.clear()
        self.job = EngineJob(self._plan(), (quantize_mod.QuantizeCancelled,
                                            imatrix_mod.ImatrixCancelled,
                                            convert_mod.ConvertCancelled), self)
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
        if isinstance(event, Progress):
            self.progress.setRange(0, max(event.total, 1) if event.total else 0)
            if event.total:
                self.progress.setValue(event.done)
            self.status.setText(event.message)
        elif isinstance(event, quantize_mod.Warning_):
            self.results.addItem(f"⚠ {event.message}")
        elif isinstance(event, quantize_mod.Quantized):
            self.outputs.append(event.path)
            self.results.addItem(f"✓ {event.quant}: {event.path.name} "
                                 f"({event.size / 2**20:,.1f} MiB, {event.seconds:.1f} s)")
        elif isinstance(event, imatrix_mod.Computed):
            self.results.addItem(f"✓ importance matrix from {event.tokens:,} tokens "
                                 f"({event.seconds:.1f} s)")
        elif isinstance(event, convert_mod.Converted):
            self.results.addItem(f"✓ converted to {event.path.name}")
        elif isinstance(event, tuple) and event[0] == "source":
            self.reference = event[1]

    def _on_finished(self, _last: object) -> None:
        self._set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(f"Done: {len(self.outputs)} files in {self.out_dir.text()}.")
        self.compare_button.setEnabled(bool(self.outputs) and self.reference is not None)

    def _on_failed(self, message: str) -> None:
        self._set_running(False)
        self.status.setText(f"Stopped: {message}")

    def _on_cancelled(self) -> None:
        self._set_running(False)
        self.status.setText("Cancelled; unfinished files were removed.")

    def _compare(self) -> None:
        if self.reference is not None:
            self.compare_requested.emit(str(self.reference), [str(p) for p in self.outputs])
