"""QtCharts views of a comparison: quality against size (with the Pareto front), speeds, memory.

Hovering a point or bar names the variant in the chart's tooltip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCharts import (
    QBarCategoryAxis,
    QBarSeries,
    QBarSet,
    QChart,
    QChartView,
    QLineSeries,
    QScatterSeries,
    QValueAxis,
)
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPointF, Qt
from PySide6.QtGui import QPainter

from app.core import report


def _view(chart: QChart) -> QChartView:
    view = QChartView(chart)
    view.setRenderHint(QPainter.RenderHint.Antialiasing)
    view.setMinimumHeight(200)
    return view


def png(view: QChartView) -> bytes:
    """The chart as PNG bytes (for the HTML report)."""
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    view.grab().save(buf, "PNG")
    return bytes(data.data())


class QualityChart(QChartView):
    """KLD (or PPL) against file size, one point per variant, the Pareto front as a line."""

    def __init__(self) -> None:
        super().__init__(QChart())
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setMinimumHeight(200)
        self.names: dict[tuple[float, float], str] = {}
        self.hover_text = ""

    def show_rows(self, table: Sequence[Mapping[str, Any]], metric: str = "kld") -> None:
        chart = QChart()
        chart.setTitle(("KL divergence" if metric == "kld" else "Perplexity")
                       + " against size (lower left is better)")
        points = QScatterSeries()
        points.setName("variants")
        points.setMarkerSize(11)
        front = QLineSeries()
        front.setName("Pareto front")
        self.names.clear()
        for r in table:
            value = r[metric]
            if value is None:
                continue
            points.append(QPointF(r["size_gib"], value))
            self.names[(round(r["size_gib"], 6), round(value, 9))] = r["name"]
        for i in report.pareto_front(table, "size_gib", metric):
            front.append(QPointF(table[i]["size_gib"], table[i][metric]))
        points.hovered.connect(self._hovered)
        chart.addSeries(front)
        chart.addSeries(points)
        chart.createDefaultAxes()
        chart.axes(Qt.Orientation.Horizontal)[0].setTitleText("File size (GiB)")
        chart.axes(Qt.Orientation.Vertical)[0].setTitleText(metric.upper())
        self.setChart(chart)

    def _hovered(self, point: QPointF, state: bool) -> None:
        key = (round(point.x(), 6), round(point.y(), 9))
        name = self.names.get(key, "")
        self.hover_text = name if state else ""
        self.setToolTip(f"{name}: {point.y():.4f} at {report.size_text(point.x())}"
                        if state and name else "")


def bar_chart(title: str, table: Sequence[Mapping[str, Any]],
              sets: Sequence[tuple[str, str]], unit: str) -> QChartView:
    """Grouped bars, one group per variant; ``sets`` are (row key, legend label)."""
    chart = QChart()
    chart.setTitle(title)
    series = QBarSeries()
    top = 0.0
    for key, label in sets:
        bar = QBarSet(label)
        for r in table:
            value = float(r[key] or 0.0)
            bar.append(value)
            top = max(top, value)
        series.append(bar)
    names = [r["name"] for r in table]
    chart.addSeries(series)
    axis_x = QBarCategoryAxis()
    axis_x.append([r["quant"] for r in table])
    chart.addAxis(axis_x, Qt.AlignmentFlag.AlignBottom)
    series.attachAxis(axis_x)
    axis_y = QValueAxis()
    axis_y.setRange(0, top * 1.1 or 1)
    axis_y.setTitleText(unit)
    chart.addAxis(axis_y, Qt.AlignmentFlag.AlignLeft)
    series.attachAxis(axis_y)
    view = _view(chart)

    def hovered(state: bool, index: int, bar: QBarSet) -> None:
        view.setToolTip(f"{names[index]}: {bar.at(index):.2f} {unit}" if state else "")

    series.hovered.connect(hovered)
    return view
