"""One message in the conversation view: text (Markdown), code blocks with Copy, actions."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.markdown_blocks import open_fence, settled_end, split_blocks

ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}
CODE_CHUNK_LINES = 20  # a streaming code block's lines are laid out this many at a time


class _MarkdownLabel(QLabel):
    """A word-wrapped Markdown label that lays its text out once per width. QLabel lays its
    whole document out again at every call, and the window's layout asks every label of the
    conversation for its height at every redraw of a streaming reply: 60 paragraphs cost 23 ms a
    redraw."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._heights: dict[int, int] = {}
        self.setTextFormat(Qt.TextFormat.MarkdownText)
        self.setText(text)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.setOpenExternalLinks(True)

    def setText(self, text: str) -> None:
        self._heights.clear()
        super().setText(text)

    def heightForWidth(self, width: int) -> int:
        height = self._heights.get(width)
        if height is None:
            height = self._heights[width] = super().heightForWidth(width)
        return height

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._heights.clear()
        super().changeEvent(event)


def _copy(text: str) -> None:
    QGuiApplication.clipboard().setText(text)


class CodeBlock(QFrame):
    """A monospace code block with its language and a Copy button."""

    def __init__(self, code: str, language: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("CodeBlock")
        self.code = code
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        header = QHBoxLayout()
        header.addWidget(QLabel(language or "code"))
        header.addStretch()
        self.copy_button = QPushButton("Copy code")
        self.copy_button.setFlat(True)
        self.copy_button.clicked.connect(lambda: _copy(self.code))
        header.addWidget(self.copy_button)
        layout.addLayout(header)
        body = QLabel(code)
        body.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        body.setTextFormat(Qt.TextFormat.PlainText)
        body.setWordWrap(True)
        layout.addWidget(body)


class MessageWidget(QFrame):
    """A message bubble. While a reply streams, its text is shown as it grows."""

    edit_requested = Signal(int)  # message id
    regenerate_requested = Signal()

    def __init__(self, role: str, text: str = "", message_id: int | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.text = text
        self.message_id = message_id
        self.setObjectName("UserMessage" if role == "user" else "AssistantMessage")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 10)
        top = QHBoxLayout()
        self.role_label = QLabel(f"<b>{ROLE_NAMES.get(role, role)}</b>")
        top.addWidget(self.role_label)
        top.addStretch()
        self.copy_button = QPushButton("Copy")
        self.copy_button.setFlat(True)
        self.copy_button.clicked.connect(lambda: _copy(self.text))
        top.addWidget(self.copy_button)
        self.edit_button = QPushButton("Edit")
        self.edit_button.setFlat(True)
        self.edit_button.setVisible(role == "user")
        self.edit_button.clicked.connect(self._edit)
        top.addWidget(self.edit_button)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setFlat(True)
        self.regenerate_button.hide()
        self.regenerate_button.clicked.connect(self.regenerate_requested)
        top.addWidget(self.regenerate_button)
        layout.addLayout(top)

        self.body = QVBoxLayout()
        layout.addLayout(self.body)
        self.status_label = QLabel()
        self.status_label.setObjectName("Warning")
        self.status_label.setWordWrap(True)
        self.status_label.hide()
        layout.addWidget(self.status_label)
        self.meta_label = QLabel()
        self.meta_label.setObjectName("Muted")
        self.meta_label.hide()
        layout.addWidget(self.meta_label)
        self.code_blocks: list[CodeBlock] = []
        self._streaming_label: _MarkdownLabel | None = None  # the paragraph being written
        self._settled = 0  # the streaming text laid out in labels above it
        self._fence = ""  # the code fence the settled text ends inside
        self.layout_text()

    def _edit(self) -> None:
        if self.message_id is not None:
            self.edit_requested.emit(self.message_id)

    def _clear_body(self) -> None:
        while self.body.count():
            item = self.body.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.code_blocks = []
        self._streaming_label = None

    def layout_text(self) -> None:
        """Lay the text out as prose and code blocks (after the reply has ended)."""
        self._clear_body()
        for block in split_blocks(self.text):
            if block.kind == "code":
                code = CodeBlock(block.text, block.language)
                self.code_blocks.append(code)
                self.body.addWidget(code)
            else:
                self.body.addWidget(_MarkdownLabel(block.text))

    def show_streaming(self, text: str) -> None:
        """Show a growing reply cheaply. Its settled paragraphs (``settled_end``) go into
        labels of their own, laid out once, and so do a code block's lines, CODE_CHUNK_LINES
        at a time, while the block is still open; only the rest is set again. (With one label
        for the whole reply, every redraw laid all of it out again: a 200-line code block took
        40 ms a redraw, and a fast model's reply 13% of a core, from llama.cpp's threads.)"""
        self.text = text
        if self._streaming_label is None:
            self._clear_body()
            self._settled, self._fence = 0, ""
            self._streaming_label = _MarkdownLabel("")
            self.body.addWidget(self._streaming_label)
        cut = settled_end(text, self._settled)
        if cut > self._settled:
            self._settle(cut, "")
        opened = open_fence(text)
        if opened is not None:
            code_start, fence = opened
            start = max(code_start, self._settled)  # the code lines not laid out yet
            lines_end = text.rfind("\n", start) + 1
            if text.count("\n", start, lines_end) >= CODE_CHUNK_LINES:
                self._settle(lines_end, fence)
        self._streaming_label.setText(self._fence + text[self._settled:] + " ▍")

    def _settle(self, end: int, fence: str) -> None:
        """Lay the streaming text up to ``end`` out in a label of its own, above the label
        being written; ``fence``: the code fence it ends inside (what follows reopens it)."""
        piece = self._fence + self.text[self._settled:end]
        self.body.insertWidget(self.body.count() - 1, _MarkdownLabel(piece.strip("\n")))
        self._settled, self._fence = end, fence

    @property
    def streaming(self) -> bool:
        """Whether the widget shows a reply still being written (with its cursor)."""
        return self._streaming_label is not None

    def finish(self, text: str, meta: str = "", status: str = "") -> None:
        """The reply has ended: final layout, metrics line and status (stopped, error)."""
        self.text = text
        self.layout_text()
        self.set_meta(meta)
        self.set_status(status)

    def set_meta(self, meta: str) -> None:
        """The line under a reply: tokens, time to first token, speed, model."""
        self.meta_label.setText(meta)
        self.meta_label.setVisible(bool(meta))

    def set_status(self, status: str) -> None:
        """A warning under the message ('Stopped', 'The engine stopped…')."""
        self.status_label.setText(status)
        self.status_label.setVisible(bool(status))
