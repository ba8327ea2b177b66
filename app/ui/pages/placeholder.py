"""A page whose feature is not built yet: it says what will be there."""

from __future__ import annotations

from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.ui.widgets import Card, page_title, text_label


class PlaceholderPage(QWidget):
    """Title and a card that describes the coming feature."""

    def __init__(self, title: str, coming: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.addWidget(page_title(title))
        card = Card("Coming to this page")
        card.body.addWidget(text_label(coming, "Muted"))
        layout.addWidget(card)
        layout.addStretch()
