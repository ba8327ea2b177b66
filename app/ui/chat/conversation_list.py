"""The list of conversations: new, search by text, rename, delete."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtWidgets import (
    QInputDialog,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.storage import Storage


class ConversationList(QWidget):
    """Shows the stored conversations, most recent first."""

    selected = Signal(int)  # conversation id
    new_requested = Signal()
    deleted = Signal(int)

    def __init__(self, storage: Storage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.storage = storage
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 12, 8, 8)
        self.new_button = QPushButton("New chat")
        self.new_button.clicked.connect(self.new_requested)
        layout.addWidget(self.new_button)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda _: self.reload())
        layout.addWidget(self.search)
        self.list = QListWidget()
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.list.itemClicked.connect(self._clicked)
        layout.addWidget(self.list)
        self.setFixedWidth(230)
        self.reload()

    def reload(self, select: int | None = None) -> None:
        """Re-read the conversations (filtered by the search text)."""
        self.list.blockSignals(True)
        self.list.clear()
        for conv in self.storage.conversations(self.search.text().strip()):
            item = QListWidgetItem(conv.title)
            item.setData(Qt.ItemDataRole.UserRole, conv.id)
            item.setToolTip(conv.title)
            self.list.addItem(item)
            if conv.id == select:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def ids(self) -> list[int]:
        """Conversation ids in display order."""
        return [int(self.list.item(i).data(Qt.ItemDataRole.UserRole))
                for i in range(self.list.count())]

    def _clicked(self, item: QListWidgetItem) -> None:
        self.selected.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    def _menu(self, pos: QPoint) -> None:
        item = self.list.itemAt(pos)
        if item is None:
            return
        conv_id = int(item.data(Qt.ItemDataRole.UserRole))
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self.rename(conv_id))
        menu.addAction("Delete…", lambda: self.delete(conv_id))
        menu.exec(self.list.mapToGlobal(pos))

    def rename(self, conv_id: int, title: str | None = None) -> None:
        """Rename (asks for the title when none is given)."""
        if title is None:
            current = self.storage.conversation(conv_id).title
            title, ok = QInputDialog.getText(self, "Rename conversation", "Title:", text=current)
            if not ok:
                return
        if title.strip():
            self.storage.update_conversation(conv_id, title=title.strip())
            self.reload(select=conv_id)

    def delete(self, conv_id: int, confirm: bool = True) -> None:
        """Delete after confirmation."""
        if confirm:
            title = self.storage.conversation(conv_id).title
            answer = QMessageBox.question(
                self, "Delete conversation", f"Delete “{title}” and all its messages?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.storage.delete_conversation(conv_id)
        self.reload()
        self.deleted.emit(conv_id)
