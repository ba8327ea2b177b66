"""The layer view: which layers and tensors a quantization hurts most, and what it does to one
tensor's values.

A heatmap (layer × tensor kind, colour = relative error of the dequantized weights against the
reference) computed in the background with progress; clicking a cell shows that tensor's value
histogram, reference beside candidate, and the distribution of the error.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PySide6.QtCharts import QChart, QChartView, QLineSeries, QValueAxis
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from app.core.automix import SensitivityTable
from app.jobs import layers_job as layers
from app.jobs.engine_job import EngineJob
from app.jobs.layers_job import Progress
from app.pipeline import automix
from app.ui.widgets import name_combo, text_label

# Viridis, sampled: perceptually even, readable in grey, kind to colour-blind eyes.
_RAMP = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
         "#6ece58", "#b5de2b", "#fde725")


def ramp(fraction: float) -> QColor:
    """Colour for a value in [0, 1] (NaN: light grey, no tensor there)."""
    if math.isnan(fraction):
        return QColor("#eeeeee")
    x = min(max(fraction, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    a, b = QColor(_RAMP[i]), QColor(_RAMP[i + 1])
    t = x - i
    return QColor(round(a.red() + (b.red() - a.red()) * t),
                  round(a.green() + (b.green() - a.green()) * t),
                  round(a.blue() + (b.blue() - a.blue()) * t))


def percent(value: float) -> str:
    return f"{value * 100:.3g}%"


class Heatmap(QWidget):
    """Layers down, tensor kinds across; hover names the tensor, click chooses it."""

    chosen = Signal(str)
    LEFT, TOP, BOTTOM = 56, 24, 28

    def __init__(self) -> None:
        super().__init__()
        self.setMouseTracking(True)
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.report: layers.LayerReport | None = None
        self.layer_ids: list[int] = []
        self.kinds: list[str] = []
        self.values = np.zeros((0, 0))
        self.by_cell: dict[tuple[int, int], layers.TensorError] = {}
        self.tips: dict[tuple[int, int], str] = {}  # the sensitivity's tooltips
        self.legend = "relative error"
        self.top = 1.0
        self.selected: tuple[int, int] | None = None

    def show_sensitivity(self, table: SensitivityTable) -> None:
        """The predicted KL divergence each block tensor adds when it alone drops to its
        probe type (about 3.4 bits): where an auto mix spends its bits."""
        self.report = None
        self.selected = None
        self.by_cell.clear()
        self.layer_ids, self.kinds, grid = table.grid()
        self.values = np.array(grid, dtype=float).reshape(len(self.layer_ids), len(self.kinds))
        by_name = {(t.layer, t.kind): t for t in table.tensors if t.layer is not None}
        self.tips = {}
        for i, layer in enumerate(self.layer_ids):
            for j, kind in enumerate(self.kinds):
                t = by_name.get((layer, kind))
                if t is not None:
                    probe = table.probe_type(t)
                    self.tips[(i, j)] = (
                        f"{t.name}\npredicted KLD at {probe}: {t.loss(probe):.3g}\n"
                        f"relative error at {probe}: {percent(t.relative(probe))}"
                        + (f"\nmeasured group: {t.group}" if t.group else ""))
        self.legend = "predicted KLD" + (
            " (measured gains)" if table.measure != "proxy" else " (proxy)")
        self._rescale()

    def show_report(self, report: layers.LayerReport | None) -> None:
        self.report = report
        self.selected = None
        self.by_cell.clear()
        self.tips = {}
        self.legend = "relative error"
        if report is None:
            self.layer_ids, self.kinds, self.values = [], [], np.zeros((0, 0))
        else:
            self.layer_ids, self.kinds, self.values = report.grid()
            row = {n: i for i, n in enumerate(self.layer_ids)}
            col = {k: j for j, k in enumerate(self.kinds)}
            for t in report.tensors:
                if t.layer is not None:
                    self.by_cell[(row[t.layer], col[t.kind])] = t
        self._rescale()

    def _rescale(self) -> None:
        finite = self.values[np.isfinite(self.values)]
        self.top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(560, max(200, self.TOP + self.BOTTOM + 14 * len(self.layer_ids)))

    def _cells(self) -> QRectF:
        return QRectF(self.LEFT, self.TOP, max(self.width() - self.LEFT - 8, 1),
                      max(self.height() - self.TOP - self.BOTTOM, 1))

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        area = self._cells()
        if not self.kinds or not self.layer_ids or not area.contains(QPointF(x, y)):
            return None
        j = int((x - area.left()) / area.width() * len(self.kinds))
        i = int((y - area.top()) / area.height() * len(self.layer_ids))
        return min(i, len(self.layer_ids) - 1), min(j, len(self.kinds) - 1)

    def cell_center(self, i: int, j: int) -> QPointF:
        area = self._cells()
        return QPointF(area.left() + (j + 0.5) * area.width() / len(self.kinds),
                       area.top() + (i + 0.5) * area.height() / len(self.layer_ids))

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        if not self.kinds:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                             "Choose a variant and press Analyze.")
            return
        area = self._cells()
        w, h = area.width() / len(self.kinds), area.height() / len(self.layer_ids)
        for i in range(len(self.layer_ids)):
            for j in range(len(self.kinds)):
                rect = QRectF(area.left() + j * w, area.top() + i * h, w, h)
                painter.fillRect(rect.adjusted(0, 0, -1, -1), ramp(self.values[i, j] / self.top))
        if self.selected is not None:
            i, j = self.selected
            painter.setPen(QColor("#ff3b30"))
            painter.drawRect(QRectF(area.left() + j * w, area.top() + i * h, w - 1, h - 1))
        painter.setPen(self.palette().text().color())
        step = max(1, math.ceil(len(self.layer_ids) * 14 / area.height()))
        for i in range(0, len(self.layer_ids), step):
            painter.drawText(QRectF(0, area.top() + i * h, self.LEFT - 6, max(h, 14)),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             f"layer {self.layer_ids[i]}")
        for j, kind in enumerate(self.kinds):
            painter.drawText(QRectF(area.left() + j * w, 0, w, self.TOP - 4),
                             Qt.AlignmentFlag.AlignCenter, kind)
        # the colour scale along the bottom
        legend = QRectF(area.left(), area.bottom() + 8, min(area.width(), 240), 10)
        for k in range(60):
            painter.fillRect(QRectF(legend.left() + legend.width() * k / 60, legend.top(),
                                    legend.width() / 60 + 1, legend.height()), ramp(k / 59))
        painter.drawText(QRectF(legend.right() + 6, legend.top() - 4, 260, 18),
                         Qt.AlignmentFlag.AlignLeft,
                         f"0 … {percent(self.top)} {self.legend}"
                         if self.legend == "relative error" else
                         f"0 … {self.top:.3g} {self.legend}")

    def tooltip_at(self, x: float, y: float) -> str:
        cell = self.cell_at(x, y)
        if cell in self.tips:
            return self.tips[cell]
        tensor = self.by_cell.get(cell) if cell else None
        if tensor is None:
            return ""
        return (f"{tensor.name}\n{tensor.reference_type} → {tensor.candidate_type}\n"
                f"relative error {percent(tensor.rel_error)}")

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        text = self.tooltip_at(event.position().x(), event.position().y())
        self.setToolTip(text)
        if text:
            QToolTip.showText(event.globalPosition().toPoint(), text, self)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        cell = self.cell_at(event.position().x(), event.position().y())
        if cell in self.by_cell:
            self.selected = cell
            self.update()
            self.chosen.emit(self.by_cell[cell].name)


def histogram_chart(title: str, edges: np.ndarray,
                    series: list[tuple[str, np.ndarray, str]], x_title: str) -> QChartView:
    """Histograms as step lines on one chart: (legend, counts, colour) each."""
    chart = QChart()
    chart.setTitle(title)
    top = 1.0
    for label, counts, colour in series:
        line = QLineSeries()
        line.setName(label)
        line.setColor(QColor(colour))
        for k, count in enumerate(counts):
            line.append(QPointF(float(edges[k]), float(count)))
            line.append(QPointF(float(edges[k + 1]), float(count)))
            top = max(top, float(count))
        chart.addSeries(line)
    axis_x, axis_y = QValueAxis(), QValueAxis()
    axis_x.setRange(float(edges[0]), float(edges[-1]))
    axis_x.setTitleText(x_title)
    axis_x.setLabelFormat("%.3g")
    axis_y.setRange(0, top * 1.05)
    axis_y.setTitleText("count")
    axis_y.setLabelFormat("%d")
    chart.addAxis(axis_x, Qt.AlignmentFlag.AlignBottom)
    chart.addAxis(axis_y, Qt.AlignmentFlag.AlignLeft)
    for s in chart.series():
        s.attachAxis(axis_x)
        s.attachAxis(axis_y)
    view = QChartView(chart)
    view.setRenderHint(QPainter.RenderHint.Antialiasing)
    view.setMinimumHeight(220)
    return view


class LayerView(QWidget):
    """Pick a variant of the shown comparison; see its per-tensor errors and histograms."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.reference: Path | None = None
        self.max_values = layers.MAX_VALUES
        self.job: EngineJob | None = None
        self.detail_job: EngineJob | None = None
        self.report: layers.LayerReport | None = None
        self.detail: layers.TensorDetail | None = None
        self._reports: dict[tuple[str, str, int], layers.LayerReport] = {}
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.candidate = name_combo()
        self.analyze_button = QPushButton("Analyze")
        self.analyze_button.setObjectName("Primary")
        self.analyze_button.clicked.connect(self.analyze)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.job and self.job.cancel())
        self.progress = QProgressBar()
        top.addWidget(text_label("Variant:"))
        top.addWidget(self.candidate, 1)
        top.addWidget(self.analyze_button)
        self.sensitivity_button = QPushButton("Sensitivity")
        self.sensitivity_button.setToolTip(
            "How much each tensor of the reference matters: the quantization error its output "
            "gets at about 3.4 bits, weighted by the importance matrix, as a predicted KL "
            "divergence (measured gains when an auto mix run measured them). No model run.")
        self.sensitivity_button.clicked.connect(self.sensitivity)
        self.sensitivity_button.setEnabled(False)
        top.addWidget(self.sensitivity_button)
        top.addWidget(self.cancel_button)
        top.addWidget(self.progress)
        layout.addLayout(top)
        self.status = text_label("The relative error ‖W − W_ref‖ / ‖W_ref‖ of each weight "
                                 "matrix after dequantizing, against the reference.", "Muted")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        split = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        self.heatmap = Heatmap()
        self.heatmap.chosen.connect(self.show_tensor)
        left_layout.addWidget(self.heatmap, 1)
        self.outside = text_label("", "Muted")
        self.outside.setWordWrap(True)
        left_layout.addWidget(self.outside)
        split.addWidget(left)
        right = QWidget()
        self.detail_layout = QVBoxLayout(right)
        self.detail_layout.setContentsMargins(0, 0, 0, 0)
        self.detail_title = text_label("Click a cell to see that tensor's values.", "Muted")
        self.detail_title.setWordWrap(True)
        self.detail_layout.addWidget(self.detail_title)
        self.values_chart: QChartView | None = None
        self.error_chart: QChartView | None = None
        split.addWidget(right)
        split.setSizes([520, 480])
        layout.addWidget(split, 1)

    def set_variants(self, reference: str | None, candidates: list[tuple[str, str]]) -> None:
        """The comparison shown: the reference's path and the candidates' (label, path)."""
        self.reference = Path(reference) if reference else None
        self.candidate.clear()
        for label, path in candidates:
            self.candidate.addItem(label, path)
        self.analyze_button.setEnabled(bool(candidates))
        self.sensitivity_button.setEnabled(self.reference is not None)
        self._show_report(None)

    def sensitivity(self) -> None:
        """The reference's sensitivity heatmap: a table an auto-mix run saved beside it, else
        the proxy computed now (with the importance matrix beside it, if any)."""
        if self.reference is None or (self.job and self.job.running):
            return
        reference = self.reference
        saved = automix.saved_table(reference)
        if saved is not None:
            self._show_sensitivity(saved)
            return
        imatrix = automix.imatrix_beside(reference)
        self.job = layers.sensitivity_job(reference, imatrix, self)
        self.job.progress.connect(self._on_progress)
        self.job.finished.connect(self._on_sensitivity)
        self.job.failed.connect(lambda m: self._stopped(f"Could not measure: {m}"))
        self.job.cancelled.connect(lambda: self._stopped("Cancelled."))
        self.analyze_button.setEnabled(False)
        self.sensitivity_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Quantizing every tensor of {reference.name} at each candidate "
                            "type (sampled rows)…")
        self.job.start()

    def _on_sensitivity(self, result: object) -> None:
        self.analyze_button.setEnabled(True)
        self.sensitivity_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if isinstance(result, SensitivityTable):
            self._show_sensitivity(result)

    def _show_sensitivity(self, table: SensitivityTable) -> None:
        self._show_report(None)
        self.heatmap.show_sensitivity(table)
        weighted = "weighted by its importance matrix" if table.imatrix else \
            "unweighted (no importance matrix beside the reference)"
        how = {"proxy": "the proxy (no model run)"}.get(
            table.measure, f"the proxy with gains measured on the calibration text "
                           f"({table.measure})")
        self.status.setText(f"Sensitivity of {table.model} by {how}, {weighted}. Brighter: "
                            "the tensor costs more quality per bit taken away; an auto mix "
                            "gives it more bits.")
        self.outside.setText("Outside the blocks: " + ", ".join(
            f"{name} {value:.3g}" for name, value in table.outside_blocks()))

    def analyze(self) -> None:
        path = self.candidate.currentData()
        if self.reference is None or path is None or (self.job and self.job.running):
            return
        key = (str(self.reference), str(path), self.max_values)
        if key in self._reports:
            self._show_report(self._reports[key])
            return
        reference, candidate, max_values = self.reference, Path(path), self.max_values
        self.job = layers.errors_job(reference, candidate, max_values, self)
        self.job.progress.connect(self._on_progress)
        self.job.finished.connect(lambda r: self._on_finished(key, r))
        self.job.failed.connect(lambda m: self._stopped(f"Could not analyze: {m}"))
        self.job.cancelled.connect(lambda: self._stopped("Cancelled."))
        self.analyze_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Reading {candidate.name} against {reference.name}…")
        self.job.start()

    def _on_progress(self, event: object) -> None:
        if isinstance(event, Progress):
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.done)

    def _on_finished(self, key: tuple[str, str, int], result: object) -> None:
        self.analyze_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if isinstance(result, layers.LayerReport):
            self._reports[key] = result
            self._show_report(result)

    def _stopped(self, message: str) -> None:
        self.analyze_button.setEnabled(True)
        self.sensitivity_button.setEnabled(self.reference is not None)
        self.cancel_button.setEnabled(False)
        self.status.setText(message)

    def _show_report(self, report: layers.LayerReport | None) -> None:
        self.report = report
        self.heatmap.show_report(report)
        self._clear_detail()
        if report is None:
            self.outside.setText("")
            return
        worst = ", ".join(f"{t.name} {percent(t.rel_error)}" for t in report.worst(3))
        note = f"Largest errors: {worst}."
        if report.sampled:
            note += (f" Sampled: tensors above {report.max_values:,} values are read from "
                     "evenly spaced rows, not whole.")
        if report.skipped:
            note += f" Not readable here: {', '.join(report.skipped)}."
        self.status.setText(note)
        self.outside.setText("Outside the blocks: " + ", ".join(
            f"{t.kind} ({t.reference_type} → {t.candidate_type}) {percent(t.rel_error)}"
            for t in report.outside_blocks()))

    def _clear_detail(self) -> None:
        for attr in ("values_chart", "error_chart"):
            chart = getattr(self, attr)
            if chart is not None:
                self.detail_layout.removeWidget(chart)
                chart.deleteLater()
                setattr(self, attr, None)
        self.detail = None
        self.detail_title.setText("Click a cell to see that tensor's values.")

    def show_tensor(self, name: str) -> None:
        if self.report is None or (self.detail_job and self.detail_job.running):
            return
        reference, candidate = Path(self.report.reference), Path(self.report.candidate)
        self.detail_job = layers.detail_job(reference, candidate, name,
                                            self.report.max_values, self)
        self.detail_job.finished.connect(self._show_detail)
        self.detail_job.failed.connect(lambda m: self.detail_title.setText(m))
        self.detail_title.setText(f"Reading {name}…")
        self.detail_job.start()

    def _show_detail(self, detail: object) -> None:
        if not isinstance(detail, layers.TensorDetail):
            return
        self._clear_detail()
        self.detail = detail
        d = detail
        sampled = (f"; {d.rows:,} of {d.total_rows:,} rows, evenly spaced" if d.sampled
                   else "")
        self.detail_title.setText(
            f"{d.name}: {d.reference_type} → {d.candidate_type}, relative error "
            f"{percent(d.rel_error)}, RMS {d.rms_error:.3g}, largest {d.max_abs_error:.3g}. "
            f"Distinct values per block of {layers.BLOCK}: {d.reference_levels:.1f} → "
            f"{d.candidate_levels:.1f}{sampled}.")
        self.values_chart = histogram_chart(
            "Weight values", d.edges,
            [("reference", d.reference_counts, "#1f77b4"),
             ("quantized", d.candidate_counts, "#ff7f0e")], "value")
        self.error_chart = histogram_chart(
            "Error (quantized − reference)", d.error_edges,
            [("error", d.error_counts, "#d62728")], "error")
        self.detail_layout.addWidget(self.values_chart, 1)
        self.detail_layout.addWidget(self.error_chart, 1)
