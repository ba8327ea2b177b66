"""The comparison table: one row per variant (the reference first), sortable by value, the best
candidate value of each column marked, and optionally one row highlighted (a recommendation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem, QWidget

from app.core import report

REFERENCE_BG = QColor("#e8eefc")
BEST_BG = QColor("#d7f2dc")


class NumberItem(QTableWidgetItem):
    """Sorts by its number, not its text."""

    def __init__(self, text: str, value: float | None) -> None:
        super().__init__(text)
        self.value = value if value is not None else float("inf")

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, NumberItem):
            return self.value < other.value
        return self.text() < other.text()


class ComparisonTable(QTableWidget):
    """``show_rows(report.rows(evaluation))``; ``highlight`` names a row to set in bold."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(report.COLUMNS), parent)
        self.setHorizontalHeaderLabels([c.title for c in report.COLUMNS])
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().hide()

    def show_rows(self, rows: Sequence[Mapping[str, Any]], highlight: int | None = None) -> None:
        winners = report.best(rows)
        self.setSortingEnabled(False)
        self.setRowCount(len(rows))
        for i, r in enumerate(rows):
            for j, col in enumerate(report.COLUMNS):
                value = r[col.key]
                text = report.cell_text(col, value)
                if col.key == "name" and r["reference"]:
                    text += "  (reference)"
                if col.key == "name" and i == highlight:
                    text = "★ " + text
                item = NumberItem(text, value) if col.better else QTableWidgetItem(text)
                if r["reference"]:
                    item.setBackground(QBrush(REFERENCE_BG))
                if winners.get(col.key) == i:
                    item.setBackground(QBrush(BEST_BG))
                    item.setToolTip("best of the variants")
                if i == highlight:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                self.setItem(i, j, item)
        # sorting stays off until a heading is clicked: the rows keep their order (reference
        # first) instead of being sorted by whatever column the header last showed
        self.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.setSortingEnabled(True)
        self.resizeColumnsToContents()
