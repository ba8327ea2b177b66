"""One message in the conversation view: text (Markdown), code blocks with Copy, actions."""

from __future__ import annotations

import re

from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.markdown_blocks import Block, settled_end, split_blocks

ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}
CODE_CHUNK_LINES = 20  # a streaming code block's lines are laid out this many at a time
OWN_HINTS_CHARS = 2000  # a label of this many characters or more computes its size hints
STREAMING_CURSOR = " ▍"  # at the end of a reply being written
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)?")  # the "(address)" of a Markdown link


class _Label(QLabel):
    """A word-wrapped label that lays its text out once per width: Markdown prose, or a code
    block's plain monospace lines. QLabel lays its whole text out again at every call, and the
    window's layout asks every label of the conversation for its height at every redraw of a
    streaming reply: 60 paragraphs cost 23 ms a redraw."""

    def __init__(self, text: str, *, code: bool = False, growing: bool = False) -> None:
        super().__init__()
        self._heights: dict[int, int] = {}
        # ``growing``: the text being written at the end of a streaming reply; see sizeHint
        self._growing = growing
        self._widest = 0  # the widest word measured so far, in pixels
        self._measured = 0  # the text's characters measured for it
        if code:
            self.setTextFormat(Qt.TextFormat.PlainText)
            self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
            self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        else:
            self.setTextFormat(Qt.TextFormat.MarkdownText)
            self.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
            self.setOpenExternalLinks(True)
        self.setText(text)
        self.setWordWrap(True)

    def setText(self, text: str) -> None:
        if text != self.text():
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
            self._widest = self._measured = 0
        super().changeEvent(event)

    # A growing label's size hints are asked at every redraw, and QLabel lays its whole text
    # out three more times for them (24 ms a redraw for a 15,000-character paragraph, most of
    # the window's time while a fast model writes one). For a word-wrapped paragraph they come
    # down to its widest word (the least width it wraps to) and its height at its width,
    # which heightForWidth keeps: measured as the text grows, only its new words. A long
    # text's hints come from the same two (QLabel's took 18-31 ms for 11,000-27,000
    # characters, most of the stall at the end of a long reply, when it is laid out again as
    # a finished message); a short one's stay QLabel's own.

    def _own_hints(self) -> bool:
        return self._growing or len(self.text()) >= OWN_HINTS_CHARS

    def _widest_word(self) -> int:
        text = self.text()
        if len(text) < self._measured:
            self._widest = self._measured = 0
        # the last word measured may have grown since: measure again from its start
        start = max(text.rfind(" ", 0, self._measured), text.rfind("\n", 0, self._measured)) + 1
        metrics = self.fontMetrics()
        # a link shows its text, not its address (which may still be being written)
        for word in set(_LINK_TARGET.sub("]", text[start:]).split()):
            self._widest = max(self._widest, metrics.horizontalAdvance(word))
        self._measured = len(text)
        return self._widest

    def minimumSizeHint(self) -> QSize:
        if not self._own_hints():
            return super().minimumSizeHint()
        return QSize(self._widest_word(), self.fontMetrics().height())

    def sizeHint(self) -> QSize:
        if not self._own_hints():
            return super().sizeHint()
        # the width it has, or will have in its parent (a label just added): the layout then
        # asks the height at the width hinted, laid out once
        width = max(self._widest_word(), self._width_to_come())
        return QSize(width, self.heightForWidth(width))

    def _width_to_come(self) -> int:
        """Its width, or the width its layout will give it: its first shown ancestor's less
        the margins and frames between (80 characters without one)."""
        if self.isVisible():
            return self.width()
        inset = 0
        widget: QWidget = self
        while (parent := widget.parentWidget()) is not None and (
                layout := parent.layout()) is not None:
            margins = layout.contentsMargins()
            inset += margins.left() + margins.right()
            if parent.isVisible():
                return parent.contentsRect().width() - inset
            inset += parent.width() - parent.contentsRect().width()  # its frame
            widget = parent
        return 80 * self.fontMetrics().averageCharWidth()


def _copy(text: str) -> None:
    QGuiApplication.clipboard().setText(text)


class CodeBlock(QFrame):
    """A monospace code block with its language and a Copy button. Its lines wrap, as in the
    finished message, while it is still being written too (``grow``)."""

    def __init__(self, code: str, language: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("CodeBlock")
        self.code = code
        self.language = language
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
        self._lines = QVBoxLayout()  # the code's labels, one after another with no gap
        self._lines.setSpacing(0)
        layout.addLayout(self._lines)
        self._open = _Label(code, code=True)  # the lines still being written, or all of them
        self._lines.addWidget(self._open)
        self._settled = 0  # the code's characters in the labels above the open one

    def labels(self) -> list[QLabel]:
        """The labels the code is shown in, in order."""
        items = (self._lines.itemAt(i) for i in range(self._lines.count()))
        return [w for w in (item.widget() for item in items if item) if isinstance(w, QLabel)]

    def grow(self, code: str, cursor: str = "") -> None:
        """Show the code of a block still being written (it only ever grows). Whole lines
        settle CODE_CHUNK_LINES at a time into labels of their own, laid out once; only the
        lines after them are set again (one label for a 400-line block took 84 ms a redraw)."""
        self.code = code
        lines_end = code.rfind("\n", self._settled) + 1
        if code.count("\n", self._settled, lines_end) >= CODE_CHUNK_LINES:
            self._lines.insertWidget(self._lines.count() - 1,
                                     _Label(code[self._settled:lines_end - 1], code=True))
            self._settled = lines_end
        self._open.setText(code[self._settled:] + cursor)


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
        self.meta_label.setWordWrap(True)  # a long line wraps instead of widening the view
        self.meta_label.hide()
        layout.addWidget(self.meta_label)
        self.code_blocks: list[CodeBlock] = []
        # while a reply streams: the widgets showing the text after its settled part (None
        # when it is not streaming), and where that part ends
        self._tail: list[QWidget] | None = None
        self._settled = 0
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
        self._tail = None

    def _block_widget(self, block: Block) -> QWidget:
        if block.kind == "code":
            code = CodeBlock(block.text, block.language)
            self.code_blocks.append(code)
            return code
        return _Label(block.text)

    def layout_text(self) -> None:
        """Lay the text out as prose and code blocks (after the reply has ended)."""
        self._clear_body()
        for block in split_blocks(self.text):
            self.body.addWidget(self._block_widget(block))

    def show_streaming(self, text: str) -> None:
        """Show a growing reply cheaply, laid out as it will be when finished: prose, and code
        in code blocks whose lines wrap. What has settled (``settled_end``: paragraphs and code
        blocks that cannot change any more) is laid out once, in widgets of its own; only the
        text after it is set again, and an open code block there adds its lines
        CODE_CHUNK_LINES at a time (``CodeBlock.grow``). With one label for the whole reply,
        every redraw laid all of it out again: a 200-line code block took 40 ms a redraw, and a
        fast model's reply 13% of a core, from llama.cpp's threads."""
        self.text = text
        if self._tail is None:
            self._clear_body()
            self._tail, self._settled = [], 0
        cut = settled_end(text, self._settled)
        if cut > self._settled:
            self._drop_tail(0)
            for block in split_blocks(text[self._settled:cut]):
                self.body.addWidget(self._block_widget(block))
            self._settled = cut
        self._show_tail(text[self._settled:])

    def _show_tail(self, text: str) -> None:
        """Show the text after the settled part, the cursor at its end: the widget for each of
        its blocks is kept while the block stays of its kind, and only updated."""
        tail = self._tail
        assert tail is not None
        blocks = split_blocks(text) or [Block("text", "")]
        first = self.body.count() - len(tail)  # the tail's place in the body
        for i, block in enumerate(blocks):
            cursor = STREAMING_CURSOR if i == len(blocks) - 1 else ""
            widget = tail[i] if i < len(tail) else None
            if block.kind == "code":
                if not (isinstance(widget, CodeBlock) and widget.language == block.language):
                    widget = CodeBlock("", block.language)
                    self._replace_tail(i, first, widget)
                widget.grow(block.text, cursor)
            else:
                if not isinstance(widget, _Label):
                    widget = _Label("", growing=True)
                    self._replace_tail(i, first, widget)
                widget.setText(block.text + cursor)
        self._drop_tail(len(blocks))

    def _replace_tail(self, i: int, first: int, widget: QWidget) -> None:
        """Put ``widget`` in the tail's place ``i`` (its widget there, if any, goes)."""
        tail = self._tail
        assert tail is not None
        if i < len(tail):
            old = tail[i]
            self.body.removeWidget(old)
            old.deleteLater()
            tail[i] = widget
        else:
            tail.append(widget)
        self.body.insertWidget(first + i, widget)

    def _drop_tail(self, keep: int) -> None:
        """Remove the tail's widgets after the first ``keep``."""
        tail = self._tail
        assert tail is not None
        for widget in tail[keep:]:
            self.body.removeWidget(widget)
            widget.deleteLater()
        del tail[keep:]

    @property
    def streaming(self) -> bool:
        """Whether the widget shows a reply still being written (with its cursor)."""
        return self._tail is not None

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
