"""'Auto mix' as a choice among the types to make: a budget slider over the sizes of the
stock types on the model at hand, and how the sensitivity is known (proxy, quick or full
measurement). The Quantize page and the wizard's plan both show it; the run it adds is the
pipeline's (``app.pipeline.automix.with_automix``)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QSlider, QWidget

from app.core.automix import Budget
from app.pipeline import automix
from app.ui.widgets import text_label


class AutomixChoice(QWidget):
    """'Auto mix' among the types: a budget slider over the stock types' sizes on this model
    and how the sensitivity is known. Shared by the Quantize page and the wizard's plan."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stocks = list(reversed(automix.stock_types()))  # smallest first, left to right
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.enabled = QCheckBox("Auto mix")
        self.enabled.setToolTip(
            "A type per tensor, chosen by how much each tensor of this model matters, at the "
            "size of a stock type; then quantized, and evaluated beside that stock type on the "
            "evaluation text. If it does not beat it, the result says so.")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, len(self.stocks) - 1)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setPageStep(1)
        self.slider.setValue(self.stocks.index("Q4_K_M") if "Q4_K_M" in self.stocks else 0)
        self.slider.setMinimumWidth(140)
        self.budget_label = text_label("")
        self.measure = QComboBox()
        self.measure.addItem("proxy only (seconds)", "proxy")
        self.measure.addItem("quick measurement (minutes)", "quick")
        self.measure.addItem("full measurement (longer)", "full")
        self.measure.setCurrentIndex(1)
        self.measure.setToolTip(
            "proxy: importance-weighted error of each tensor, no model run. quick/full: also "
            "measure, on the calibration text, what each group of tensors costs when it alone "
            "has fewer bits, and weigh the proxy by it.")
        row.addWidget(self.enabled)
        row.addWidget(text_label("budget:"))
        row.addWidget(self.slider, 1)
        row.addWidget(self.budget_label)
        row.addWidget(self.measure)
        self.enabled.toggled.connect(self._update)
        self.slider.valueChanged.connect(self._update)
        self.measure.currentIndexChanged.connect(lambda _i: self.changed.emit())
        self._update()

    def budget(self) -> Budget:
        return Budget(stock=self.stocks[self.slider.value()])

    def chosen(self) -> tuple[Budget, str] | None:
        """(budget, measure) when the auto mix is ticked."""
        if not self.enabled.isChecked():
            return None
        return self.budget(), str(self.measure.currentData())

    def _update(self) -> None:
        on = self.enabled.isChecked()
        self.slider.setEnabled(on)
        self.measure.setEnabled(on)
        self.budget_label.setText(f"the size of {self.stocks[self.slider.value()]}")
        self.changed.emit()
