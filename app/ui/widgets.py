"""Small widgets shared by several pages."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFrame,
    QLabel,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)


class Card(QFrame):
    """A rounded panel with a title and a column of content."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(18, 14, 18, 14)
        self.title = QLabel(title)
        self.title.setObjectName("CardTitle")
        self.title.setWordWrap(True)
        self.body.addWidget(self.title)


def text_label(text: str = "", object_name: str | None = None, selectable: bool = True) -> QLabel:
    """A word-wrapped label whose text a user can select and copy."""
    label = QLabel(text)
    label.setWordWrap(True)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if object_name:
        label.setObjectName(object_name)
    return label


def set_role(widget: QWidget, name: str) -> None:
    """Give ``widget`` the style sheet's look for ``name`` ('Warning', 'Muted', '' for none),
    re-applied at once (Qt styles by object name only when a widget is polished)."""
    widget.setObjectName(name)
    widget.style().unpolish(widget)
    widget.style().polish(widget)


def page_title(text: str) -> QLabel:
    """The heading at the top of a page."""
    label = QLabel(text)
    label.setObjectName("PageTitle")
    return label


def row_table(columns: Sequence[str]) -> QTableWidget:
    """A read-only table whose rows are picked one at a time (lists of models, files)."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().hide()
    return table


def name_combo(characters: int = 24) -> QComboBox:
    """A combo box of file or model names that does not grow with its longest item (a long
    name would widen the whole window); the open list shows names whole."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo
