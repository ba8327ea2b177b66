"""Chat flows on the tiny model: streaming, stop, regenerate, edit, crash, restart, and the
page as a view of its chat session (the race between a reply's end and the next send)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QDialog, QLabel, QScrollArea, QWidget
from pytestqt.qtbot import QtBot

from app.core import hardware, storage
from app.core.settings import Settings
from app.core.storage import Storage
from app.jobs.engine_client import READING_INTERVAL, EngineClient
from app.pipeline.chat_session import SessionState
from app.ui.chat import chat_page
from app.ui.chat.chat_page import ChatPage
from app.ui.chat.message_widget import CodeBlock, MessageWidget
from app.ui.main_window import MainWindow
from tests.helpers.tiny_model import write_tiny_llama

MakePage = Callable[..., ChatPage]


@pytest.fixture
def make_page(qtbot: QtBot, store: Storage, engines: list[EngineClient],
              tiny_model: Path) -> MakePage:
    def make(max_tokens: int = 64, model: Path | None = tiny_model) -> ChatPage:
        engine = EngineClient()
        engines.append(engine)
        settings = Settings(max_tokens=max_tokens, n_ctx=2048)
        page = ChatPage(store, engine, settings, model)
        qtbot.addWidget(page)
        if model is not None:
            qtbot.waitUntil(lambda: engine.current is not None, timeout=60_000)
        return page

    return make


def _send(qtbot: QtBot, page: ChatPage, text: str, timeout: int = 60_000) -> storage.Message:
    with qtbot.waitSignal(page.reply_finished, timeout=timeout) as blocker:
        page.send(text)
    return blocker.args[0]


def test_send_streams_tokens_and_saves_the_reply(qtbot: QtBot, make_page: MakePage,
                                                 store: Storage) -> None:
    page = make_page(max_tokens=1000)
    growth: list[int] = []
    page.engine.token.connect(lambda _rid, _t: growth.append(len(page.session.reply.text)
                                                             if page.session.reply else -1))
    reply = _send(qtbot, page, "Hello there")
    # the text arrived in pieces, growing (a piece every READING_INTERVAL at most: the
    # tiny model writes 1,000 tokens in about half a second)
    assert len(growth) >= 3 and growth == sorted(growth) and growth[0] > 0
    assert reply.role == "assistant" and reply.status == storage.STATUS_COMPLETE
    assert reply.metrics is not None and reply.metrics["generated_tokens"] == 1000
    widgets = page.message_widgets()
    assert [w.role for w in widgets] == ["user", "assistant"]
    assert widgets[1].text == reply.content and reply.content
    assert "1000 tokens" in widgets[1].meta_label.text()
    assert "tok/s" in widgets[1].meta_label.text()
    assert "tiny-llama" in widgets[1].meta_label.text()
    assert widgets[1].regenerate_button.isVisibleTo(widgets[1])
    conv = store.conversations()[0]
    assert conv.title == "Hello there"
    assert [m.content for m in store.messages(conv.id)] == ["Hello there", reply.content]


def test_stop_mid_reply_keeps_what_was_generated(qtbot: QtBot, make_page: MakePage,
                                                 store: Storage) -> None:
    page = make_page(max_tokens=1900)
    page.engine.token.connect(lambda _rid, _t: page.stop())
    reply = _send(qtbot, page, "Tell me a long story")
    assert reply.status == storage.STATUS_STOPPED
    assert reply.metrics is not None and reply.metrics["generated_tokens"] < 1900
    assert store.message(reply.id).content == reply.content
    assert page.message_widgets()[-1].status_label.text() == "Stopped."
    assert page.send_button.isEnabled() and not page.stop_button.isEnabled()


def test_escape_in_the_composer_stops(qtbot: QtBot, make_page: MakePage) -> None:
    page = make_page(max_tokens=1900)
    page.engine.token.connect(lambda _rid, _t: qtbot.keyClick(page.composer, Qt.Key.Key_Escape))
    reply = _send(qtbot, page, "Go on and on")
    assert reply.status == storage.STATUS_STOPPED


def test_enter_sends_and_shift_enter_adds_a_line(qtbot: QtBot, make_page: MakePage) -> None:
    page = make_page(max_tokens=8)
    qtbot.keyClicks(page.composer, "first line")
    qtbot.keyClick(page.composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(page.composer, "second line")
    assert page.composer.toPlainText() == "first line\nsecond line"
    with qtbot.waitSignal(page.reply_finished, timeout=60_000):
        qtbot.keyClick(page.composer, Qt.Key.Key_Return)
    assert page.composer.toPlainText() == ""
    assert page.message_widgets()[0].text == "first line\nsecond line"


def test_a_pause_in_typing_has_the_engine_read_the_message_so_its_reply_starts_from_the_cache(
        qtbot: QtBot, make_page: MakePage) -> None:
    page = make_page(max_tokens=8)
    _send(qtbot, page, "Hello")  # a conversation with history
    with qtbot.waitSignal(page.engine.read_ahead_ended, timeout=60_000) as ahead:
        qtbot.keyClicks(page.composer, "Tell me about rivers and the valleys they cut")
        # typing goes on: nothing is read before the pause
        assert not page.engine.reading_ahead
    done = ahead.args[0]
    assert done.finish_reason == "length" and done.text == ""
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        qtbot.keyClick(page.composer, Qt.Key.Key_Return)
    metrics = blocker.args[0].metrics
    # the whole conversation and the message were read: Send decoded nothing more
    assert metrics["cached_tokens"] == metrics["prompt_tokens"]
    assert [w.text for w in page.message_widgets()][2] == (
        "Tell me about rivers and the valleys they cut")


def test_with_reading_ahead_off_nothing_runs_before_send(
        qtbot: QtBot, make_page: MakePage, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ui.chat.settings_dialog import ConversationSettingsDialog

    def uncheck_and_accept(dialog: ConversationSettingsDialog) -> int:
        assert dialog.read_ahead.isChecked()  # on by default
        dialog.read_ahead.setChecked(False)
        return QDialog.DialogCode.Accepted.value

    page = make_page(max_tokens=8)
    monkeypatch.setattr(ConversationSettingsDialog, "exec", uncheck_and_accept)
    page.edit_conversation_settings()  # the chat's Settings… dialog
    assert page.settings.read_ahead is False
    ended: list[object] = []
    page.engine.read_ahead_ended.connect(ended.append)
    qtbot.keyClicks(page.composer, "Tell me about rivers")
    qtbot.wait(3 * chat_page.READ_AHEAD_PAUSE_MS)
    assert not ended and not page.engine.reading_ahead
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        qtbot.keyClick(page.composer, Qt.Key.Key_Return)
    assert blocker.args[0].metrics["cached_tokens"] == 0


def test_regenerate_replaces_the_last_reply(qtbot: QtBot, make_page: MakePage,
                                            store: Storage) -> None:
    page = make_page(max_tokens=16)
    first = _send(qtbot, page, "Hi")
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        page.message_widgets()[-1].regenerate_button.click()
    second = blocker.args[0]
    assert second.id != first.id
    conv = store.conversations()[0]
    assert [(m.role, m.id) for m in store.messages(conv.id)][1:] == [("assistant", second.id)]
    assert [w.role for w in page.message_widgets()] == ["user", "assistant"]


def test_edit_and_resend_drops_later_messages(qtbot: QtBot, make_page: MakePage,
                                              store: Storage) -> None:
    page = make_page(max_tokens=8)
    _send(qtbot, page, "first question")
    second = _send(qtbot, page, "second question")
    # the second turn reused the first from the cache, and its line says how much
    assert second.metrics is not None and second.metrics["cached_tokens"] > 0
    assert (f"{second.metrics['cached_tokens']:,} of {second.metrics['prompt_tokens']:,} "
            "prompt tokens cached") in page.message_widgets()[-1].meta_label.text()
    conv_id = store.conversations()[0].id
    first_user = store.messages(conv_id)[0]
    with qtbot.waitSignal(page.reply_finished, timeout=60_000):
        page.edit_and_resend(first_user.id, "first question, edited")
    msgs = store.messages(conv_id)
    assert (msgs[0].role, msgs[0].content) == ("user", "first question, edited")
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert len(page.message_widgets()) == 2


def test_system_prompt_and_sampling_are_per_conversation(qtbot: QtBot, make_page: MakePage,
                                                         store: Storage) -> None:
    page = make_page(max_tokens=8)
    _send(qtbot, page, "hello")
    conv_id = store.conversations()[0].id
    store.update_conversation(conv_id, system_prompt="Be terse.",
                              sampling={"temperature": 0.0, "max_tokens": 5, "seed": 3})
    assert page.session.history()[0].role == "system"
    reply = _send(qtbot, page, "again")
    assert reply.metrics is not None and reply.metrics["generated_tokens"] == 5
    assert reply.sampling is not None and reply.sampling["temperature"] == 0.0


def test_killed_engine_keeps_the_window_and_every_message(qtbot: QtBot, make_page: MakePage,
                                                          store: Storage) -> None:
    page = make_page(max_tokens=8)
    _send(qtbot, page, "before the crash")
    page.settings.max_tokens = 1900
    killed: list[bool] = []

    def kill_once(_rid: int, _text: str) -> None:
        pid = page.engine.pid()
        if not killed and pid is not None:
            killed.append(True)
            os.kill(pid, signal.SIGKILL)

    page.engine.token.connect(kill_once)
    with qtbot.waitSignal(page.engine_error, timeout=60_000) as blocker:
        page.send("this reply dies")
    assert "SIGKILL" in blocker.args[0]
    assert page.banner.isVisibleTo(page) and page.reload_button.isVisibleTo(page)
    conv_id = store.conversations()[0].id
    msgs = store.messages(conv_id)
    assert [m.content for m in msgs[:3]] == ["before the crash", msgs[1].content,
                                             "this reply dies"]
    assert msgs[-1].role == "assistant" and msgs[-1].status == storage.STATUS_PARTIAL
    assert "SIGKILL" in (msgs[-1].error or "")
    assert "Incomplete" in page.message_widgets()[-1].status_label.text()
    # opened again, the cut reply has no metrics to show: no line of zeros under it
    assert msgs[-1].metrics is None
    page.open_conversation(conv_id)
    cut = page.message_widgets()[-1]
    assert "Incomplete" in cut.status_label.text()
    assert "tokens" not in cut.meta_label.text() and "tok/s" not in cut.meta_label.text()
    # Reload brings the engine back and the chat goes on.
    with qtbot.waitSignal(page.model_loaded, timeout=60_000):
        page.reload_button.click()
    page.settings.max_tokens = 4
    reply = _send(qtbot, page, "after the crash")
    assert reply.status == storage.STATUS_COMPLETE


def test_an_engine_killed_while_reading_ahead_keeps_the_message_being_typed(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    page = make_page(max_tokens=8)
    _send(qtbot, page, "before the crash")

    def kill() -> None:  # right after the page asked the engine to read the message
        pid = page.engine.pid()
        assert pid is not None and page.engine.reading_ahead
        os.kill(pid, signal.SIGKILL)

    page._read_ahead_timer.timeout.connect(kill)
    with qtbot.waitSignal(page.engine_error, timeout=60_000) as blocker:
        qtbot.keyClicks(page.composer, "a message being typed")
    assert "SIGKILL" in blocker.args[0]
    page._read_ahead_timer.timeout.disconnect(kill)
    assert page.banner.isVisibleTo(page)
    assert page.composer.toPlainText() == "a message being typed"
    assert len(store.messages(store.conversations()[0].id)) == 2
    with qtbot.waitSignal(page.model_loaded, timeout=60_000):
        page.reload_button.click()
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as sent:
        qtbot.keyClick(page.composer, Qt.Key.Key_Return)
    assert sent.args[0].status == storage.STATUS_COMPLETE
    assert [m.content for m in store.messages(store.conversations()[0].id)][2] == (
        "a message being typed")


def test_conversations_new_search_rename_delete(qtbot: QtBot, make_page: MakePage,
                                                store: Storage) -> None:
    page = make_page(max_tokens=4)
    assert page.empty_hint.isVisibleTo(page)  # an empty conversation says where to type
    _send(qtbot, page, "about llamas")
    assert not page.empty_hint.isVisibleTo(page)
    page.new_conversation()
    assert page.message_widgets() == [] and page.empty_hint.isVisibleTo(page)
    _send(qtbot, page, "about quantization")
    convs = store.conversations()
    assert len(convs) == 2 and page.conversations.ids() == [c.id for c in convs]
    page.conversations.search.setText("llamas")
    assert page.conversations.ids() == [convs[1].id]
    page.conversations.search.setText("")
    page.conversations.rename(convs[0].id, "Quant notes")
    assert store.conversation(convs[0].id).title == "Quant notes"
    assert page.conversations.list.item(0).text() == "Quant notes"
    page.conversations.delete(convs[0].id, confirm=False)
    assert page.conversations.ids() == [convs[1].id]
    assert page.message_widgets() == []  # the open conversation was the deleted one
    page.open_conversation(convs[1].id)
    assert page.message_widgets()[0].text == "about llamas"
    assert not page.empty_hint.isVisibleTo(page)


def _widgets(widget: MessageWidget) -> list[QWidget]:
    items = (widget.body.itemAt(i) for i in range(widget.body.count()))
    return [w for w in (item.widget() for item in items if item) if w is not None]


def _labels(widget: MessageWidget) -> list[QLabel]:
    return [w for w in _widgets(widget) if isinstance(w, QLabel)]


def test_a_streaming_reply_lays_out_each_settled_paragraph_once(qtbot: QtBot) -> None:
    widget = MessageWidget("assistant")
    qtbot.addWidget(widget)
    widget.show_streaming("First paragraph.\n\nSecond")
    first = _labels(widget)
    assert [label.text() for label in first] == ["First paragraph.", "Second ▍"]
    widget.show_streaming("First paragraph.\n\nSecond paragraph.\n\n```py\nx = 1\n\n")
    now = _widgets(widget)
    assert now[0] is first[0]  # the first paragraph was not set again
    assert [w.text() for w in now[:2] if isinstance(w, QLabel)] == ["First paragraph.",
                                                                   "Second paragraph."]
    # the open code block is a code block already; its blank line settles nothing
    block = now[2]
    assert isinstance(block, CodeBlock) and len(now) == 3
    assert (block.language, block.code) == ("py", "x = 1")
    assert [label.text() for label in block.labels()] == ["x = 1 ▍"]
    widget.show_streaming("First paragraph.\n\nSecond paragraph.\n\n```py\nx = 1\n\ny = 2")
    assert _widgets(widget)[2] is block and block.code == "x = 1\n\ny = 2"  # updated, not new
    final = "First paragraph.\n\nSecond paragraph.\n\n```py\nx = 1\n\ny = 2\n```"
    widget.finish(final)
    assert widget.text == final and not widget.streaming
    assert [c.code for c in widget.code_blocks] == ["x = 1\n\ny = 2"]


def test_a_streaming_code_block_is_laid_out_twenty_lines_at_a_time(qtbot: QtBot) -> None:
    widget = MessageWidget("assistant")
    qtbot.addWidget(widget)
    code = [f"x{i} = {i}" for i in range(50)]
    shown = "Code:\n\n```py\n"
    for line in code[:45]:  # a line at a time, as a model writes it
        shown += line + "\n"
        widget.show_streaming(shown)
    label, block = _widgets(widget)
    assert isinstance(label, QLabel) and label.text() == "Code:"
    assert isinstance(block, CodeBlock)
    chunks = block.labels()
    assert [c.text() for c in chunks] == ["\n".join(code[:20]), "\n".join(code[20:40]),
                                          "\n".join(code[40:45]) + " ▍"]
    for line in code[45:]:
        shown += line + "\n"
        widget.show_streaming(shown)
    later = block.labels()
    assert later[0] is chunks[0] and later[1] is chunks[1]  # laid out once
    whole = shown + "```\n\nAfter"
    widget.show_streaming(whole)
    # closed and followed by a blank line: settled, laid out as in the finished message
    texts = [w.text() if isinstance(w, QLabel) else w.code for w in _widgets(widget)
             if isinstance(w, QLabel | CodeBlock)]
    assert texts == ["Code:", "\n".join(code), "After ▍"]
    widget.finish(whole)
    assert [c.code for c in widget.code_blocks] == ["\n".join(code)]


LONG_LINE = "result = compute(argument_one, argument_two) + other(x) * 3  # why it is done " * 3


@pytest.mark.parametrize("text", [
    "Here:\n\n```python\n" + LONG_LINE + "\nprint(result)\n",  # an open code block
    "Words, then a long one: " + "x" * 60 + " and more words " * 200,  # an open paragraph
    "See [the guide](https://example.com/" + "a" * 150 + ") and more words " * 50,  # a link
], ids=["code", "paragraph", "link"])
@pytest.mark.qt_log_ignore("does not support propagateSizeHints")  # shown offscreen
def test_a_reply_being_written_is_as_narrow_as_the_finished_reply(qtbot: QtBot, text: str
                                                                 ) -> None:
    """Text being written must not widen the conversation (a sideways scroll bar) more than
    the finished reply does: code lines wrap, and a paragraph's least width is its widest
    word (the size hints a growing paragraph gives without laying itself out)."""
    finished = MessageWidget("assistant")
    qtbot.addWidget(finished)
    finished.finish(text + "```" if "```" in text else text)
    least = finished.minimumSizeHint().width()
    streaming = MessageWidget("assistant")
    qtbot.addWidget(streaming)
    streaming.show_streaming(text)
    brackets = streaming.fontMetrics().horizontalAdvance("[]")  # Markdown's, measured too
    assert least * 0.9 <= streaming.minimumSizeHint().width() <= least + brackets
    assert least < len(LONG_LINE) * 3  # nothing kept on one line
    if "```" not in text:  # the paragraph being written hints its own width and height
        streaming.resize(500, 400)
        streaming.show()
        label = _labels(streaming)[-1]
        assert label.text().endswith("▍")
        assert label.sizeHint() == QSize(label.width(), label.heightForWidth(label.width()))


@pytest.mark.parametrize("code", [False, True], ids=["prose", "code"])
@pytest.mark.qt_log_ignore("does not support propagateSizeHints")  # shown offscreen
def test_a_long_finished_text_hints_the_size_qlabel_would_and_is_laid_out_whole(
        qtbot: QtBot, code: bool) -> None:
    """A finished message's long text gives its own size hints (its widest word, its height
    at its width), not QLabel's, which lay it all out again: they must come to what QLabel's
    would, and the text must get the height QLabel needs for it at its width."""
    from app.ui.chat.message_widget import OWN_HINTS_CHARS

    words = "the river " + "x" * 40 + " carries silt to the sea, " * 120
    text = f"```python\n{words}\n```" if code else words
    area = QScrollArea()  # as in the conversation view: as tall as its text needs
    area.setWidgetResizable(True)
    qtbot.addWidget(area)
    widget = MessageWidget("assistant")
    area.setWidget(widget)
    area.resize(600, 400)
    area.show()
    widget.finish(text)
    label = widget.code_blocks[0].labels()[-1] if code else _labels(widget)[-1]
    assert len(label.text()) >= OWN_HINTS_CHARS
    qt = QLabel()  # QLabel's own hints for the same text, as the label shows it
    qt.setTextFormat(label.textFormat())
    qt.setFont(label.font())
    qt.setWordWrap(True)
    qt.setText(label.text())
    assert qt.minimumSizeHint().width() * 0.9 <= label.minimumSizeHint().width() <= (
        qt.minimumSizeHint().width() + 2)
    qtbot.waitUntil(lambda: label.height() == qt.heightForWidth(label.width()))
    assert label.sizeHint() == QSize(label.width(), label.heightForWidth(label.width()))


def test_a_label_lays_out_its_new_text_for_its_height(qtbot: QtBot) -> None:
    widget = MessageWidget("assistant")
    qtbot.addWidget(widget)
    widget.show_streaming("one line")
    label = _labels(widget)[-1]
    short = label.heightForWidth(300)
    widget.show_streaming("one line " + "and many more words " * 40)
    assert label is _labels(widget)[-1] and label.heightForWidth(300) > 3 * short


@pytest.mark.qt_log_ignore("does not support propagateSizeHints")  # shown offscreen
def test_the_view_follows_the_end_unless_the_reader_scrolled_up(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    page = make_page(model=None)
    page.resize(900, 600)
    page.show()
    conv = store.create_conversation("long")
    for i in range(12):
        store.add_message(conv.id, "user", f"question {i}")
        store.add_message(conv.id, "assistant", f"answer {i}\n\n" + "words " * 80)
    page.open_conversation(conv.id)
    bar = page.message_scroll.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum())  # its end
    last = page.message_widgets()[-1]
    last.show_streaming("more " * 400)  # the reply grows while the reader is at the end
    qtbot.waitUntil(lambda: bar.value() == bar.maximum())
    middle = bar.maximum() // 2
    bar.setValue(middle)  # the reader scrolls up to read
    grown = bar.maximum()
    last.show_streaming("more " * 800)
    qtbot.waitUntil(lambda: bar.maximum() > grown)
    assert bar.value() == middle  # left where the reader is
    assert page.latest_button.isVisible()  # ... with a way back to the end
    page.latest_button.click()
    assert bar.value() == bar.maximum() and not page.latest_button.isVisible()
    last.show_streaming("more " * 1200)  # at the end again: followed again
    qtbot.waitUntil(lambda: bar.value() == bar.maximum() > grown)
    bar.setValue(0)
    bar.setValue(bar.maximum())  # scrolling back down by hand follows too
    assert not page.latest_button.isVisible()


@pytest.mark.qt_log_ignore("does not support propagateSizeHints")  # shown offscreen
def test_a_redraw_of_a_reply_being_written_lays_its_text_out_at_one_width(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    """A scroll bar shown only as needed made the scroll area lay the conversation out at two
    widths (with and without it) at every redraw: the text being written twice."""
    page = make_page(model=None)
    page.resize(900, 600)
    page.show()
    conv = store.create_conversation("short")
    store.add_message(conv.id, "user", "question")
    store.add_message(conv.id, "assistant", "answer")
    page.open_conversation(conv.id)
    reply = page.message_widgets()[-1]
    reply.show_streaming("words")
    label = _labels(reply)[-1]
    qtbot.waitUntil(lambda: label.isVisible() and label.width() > 1)
    for n in (5, 200, 400):  # fitting in the view, then taller than it
        reply.show_streaming("words " * n)
        assert _labels(reply)[-1] is label
        QGuiApplication.processEvents()
        assert list(label._heights) == [label.width()]  # laid out since set: once, as shown


def test_the_engine_sends_a_reply_s_text_only_as_often_as_the_page_draws_it(
        qtbot: QtBot, make_page: MakePage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each text event but the first (and the end's) answers a redraw's ask: with redraws
    100 ms apart (a dear paragraph), the engine does not send text every READING_INTERVAL
    that nothing would draw, each event waking the window on a core llama.cpp uses."""
    page = make_page(max_tokens=1900)
    monkeypatch.setattr(page, "_pace_redraws", lambda first=False:
                        page._render_timer.setInterval(100))
    drawn: list[str] = []
    show = MessageWidget.show_streaming
    monkeypatch.setattr(MessageWidget, "show_streaming",
                        lambda self, text: (drawn.append(text), show(self, text))[1])
    events: list[str] = []
    page.engine.token.connect(lambda _rid, text: events.append(text))
    reply = _send(qtbot, page, "Hello there")
    assert "".join(events) == reply.content and len(events) >= 2
    # drawn: the empty reply at the start, then each text that came but the end's
    assert len(events) <= len(drawn), (len(events), len(drawn))
    assert drawn[-1] in ("".join(events[:-1]), reply.content)


def test_redraws_of_a_reply_being_written_are_spaced_by_what_they_cost(
        make_page: MakePage, monkeypatch: pytest.MonkeyPatch) -> None:
    page = make_page(model=None)
    cpu = [10.0]
    monkeypatch.setattr(chat_page.time, "thread_time", lambda: cpu[0])
    timer = page._render_timer

    def redraw(spent: float) -> int:
        cpu[0] += spent
        page._pace_redraws()
        return timer.interval()

    page._pace_redraws(first=True)
    assert timer.interval() == round(READING_INTERVAL * 1000)
    assert redraw(0.001) == round(READING_INTERVAL * 1000)  # cheap: as often as text comes
    # dear (a long paragraph on a slow machine): about REDRAW_SHARE of a core, averaged
    assert redraw(0.007) == round(0.004 / chat_page.REDRAW_SHARE * 1000)
    assert redraw(0.007) == round(0.0055 / chat_page.REDRAW_SHARE * 1000)
    assert redraw(1.0) == round(chat_page.MAX_REDRAW_INTERVAL * 1000)  # at most this far apart
    page._pace_redraws(first=True)  # the next reply starts afresh
    assert timer.interval() == round(READING_INTERVAL * 1000)


def test_deleting_a_conversation_removes_what_the_engine_kept_of_conversations(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    """The engine keeps conversations' keys, values and tokens on disk for quick next turns
    (app.engine.kv_shelf); they hold the conversations' text, so a delete removes them."""
    from app.core import paths

    page = make_page()
    left = paths.cache_location() / "kv-left-0123456789abcdef"  # left by an earlier load
    left.mkdir(parents=True)
    (left / "0.state").write_bytes(b"keys and values")
    _send(qtbot, page, "about llamas")
    conv = store.conversations()[0]
    page.conversations.delete(conv.id, confirm=False)
    _send(qtbot, page, "something else")  # the engine took the request after the forget
    assert not left.exists()


def test_code_blocks_get_copy_buttons(qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    page = make_page(model=None)
    conv = store.create_conversation("code")
    store.add_message(conv.id, "user", "show code")
    store.add_message(conv.id, "assistant",
                      "Here:\n```python\nprint('hi')\n```\nand\n```\nls -l\n```")
    page.open_conversation(conv.id)
    reply = page.message_widgets()[-1]
    assert [c.code for c in reply.code_blocks] == ["print('hi')", "ls -l"]
    reply.code_blocks[0].copy_button.click()
    assert QGuiApplication.clipboard().text() == "print('hi')"


def test_restart_finds_the_conversation_intact(qtbot: QtBot, engines: list[EngineClient],
                                               tiny_model: Path) -> None:
    def window() -> MainWindow:
        engine = EngineClient()
        engines.append(engine)
        w = MainWindow(probe=hardware.probe,
                       embedded_model=tiny_model, store=Storage(), engine=engine,
                       settings=Settings(max_tokens=12), save_settings=False)
        qtbot.addWidget(w)
        qtbot.waitUntil(lambda: engine.current is not None, timeout=60_000)
        return w

    first = window()
    _send(qtbot, first.chat_page, "remember me")
    shown = [w.text for w in first.chat_page.message_widgets()]
    first.close()

    second = window()
    assert [w.text for w in second.chat_page.message_widgets()] == shown
    assert second.chat_page.conversations.list.item(0).text() == "remember me"


def test_auto_gpu_layers_come_from_the_load_plan(qtbot: QtBot, make_page: MakePage) -> None:
    from tests.unit.test_recommend import _profile

    page = make_page(max_tokens=4)
    # The engine's loaded model, not the next model_loaded signal: the first load's signal
    # may still be queued for the UI thread when the test goes on.
    def loaded_layers() -> int | None:
        current = page.engine.current
        return None if current is None else current.n_gpu_layers

    assert loaded_layers() == 0  # no hardware profile yet: the CPU
    page.set_hardware(_profile(16 * 1024**3, 8 * 1024**3))  # a GPU with room for everything
    page.reload_model()
    qtbot.waitUntil(lambda: loaded_layers() == 3, timeout=60_000)  # both blocks and the output
    page.set_hardware(_profile(16 * 1024**3))  # no GPU
    page.reload_model()
    qtbot.waitUntil(lambda: loaded_layers() == 0, timeout=60_000)


def test_a_send_before_the_finished_reply_is_handled_loses_nothing(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    page = make_page(max_tokens=30)
    page.send("first")
    assert page.session.state is SessionState.REPLYING
    # Keep the UI thread busy until the engine has finished the reply on its reader thread:
    # the engine says it is free, but the end of the reply is still queued for the page.
    deadline = time.monotonic() + 20
    while page.engine.busy and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not page.engine.busy and page.session.busy
    assert not page.send_button.isEnabled() and page.stop_button.isEnabled()
    page.composer.setPlainText("second")
    page.composer.send_requested.emit("second")  # Enter in the composer, in that gap
    assert page.composer.toPlainText() == "second"  # refused: the text is kept
    assert page.hint.isVisibleTo(page) and "still being written" in page.hint.text()
    assert [w.role for w in page.message_widgets()] == ["user", "assistant"]
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        pass  # the queued end of the first reply is handled
    first = blocker.args[0]
    assert first.status == storage.STATUS_COMPLETE
    widget = page.message_widgets()[-1]
    assert not widget.streaming and widget.text == first.content
    assert widget.message_id == first.id and "30 tokens" in widget.meta_label.text()
    assert page.send_button.isEnabled()
    second = _send(qtbot, page, page.composer.toPlainText())
    conv_id = store.conversations()[0].id
    assert [m.content for m in store.messages(conv_id)] == [
        "first", first.content, "second", second.content]
    assert not any(w.streaming for w in page.message_widgets())


def test_runaway_template_shows_a_clear_error_and_the_engine_goes_on(
        qtbot: QtBot, make_page: MakePage, store: Storage, tmp_path: Path,
        tiny_model: Path) -> None:
    loop = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    hostile = write_tiny_llama(tmp_path / "runaway.gguf", chat_template=loop)
    page = make_page(max_tokens=8, model=hostile)
    pid = page.engine.pid()
    start = time.monotonic()
    with qtbot.waitSignal(page.engine_error, timeout=10_000) as blocker:
        page.send("hello")
    assert time.monotonic() - start < 2.5  # a 1 s budget, then the error reaches the window
    assert "ran for more than 1 s" in blocker.args[0]
    assert page.banner.isVisibleTo(page) and "loop for ever" in page.banner_text.text()
    reply = store.messages(store.conversations()[0].id)[-1]
    assert reply.status == storage.STATUS_PARTIAL and "ran for more than" in (reply.error or "")
    assert "Incomplete" in page.message_widgets()[-1].status_label.text()
    assert page.send_button.isEnabled() and not page.session.busy
    # The same engine process loads a sound model and answers.
    with qtbot.waitSignal(page.model_loaded, timeout=60_000):
        page.load_model(str(tiny_model))
    assert page.engine.pid() == pid
    assert _send(qtbot, page, "and now?").status == storage.STATUS_COMPLETE


def test_reopening_or_leaving_a_conversation_while_its_reply_streams(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    page = make_page(max_tokens=1900)
    page.send("a long one")
    qtbot.waitUntil(lambda: page.session.reply is not None and len(page.session.reply.text) > 5,
                    timeout=60_000)
    first = page.conversation_id
    assert first is not None
    # Opening the same conversation again keeps the reply streaming in place: its text goes
    # on coming (the page asks for it at each redraw) into the new view.
    page.open_conversation(first)
    widgets = page.message_widgets()
    assert [w.role for w in widgets] == ["user", "assistant"] and widgets[1].streaming
    shown = len(widgets[1].text)
    qtbot.waitUntil(lambda: widgets[1].streaming and len(widgets[1].text) > shown,
                    timeout=10_000)
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        page.stop()
    assert blocker.args[0].status == storage.STATUS_STOPPED
    widgets = page.message_widgets()
    assert len(widgets) == 2 and not widgets[1].streaming
    assert widgets[1].status_label.text() == "Stopped."
    # Leaving for another conversation stops the reply; it is saved to its own.
    other = store.create_conversation("other").id
    page.send("another long one")
    qtbot.waitUntil(lambda: page.session.reply is not None and len(page.session.reply.text) > 5,
                    timeout=60_000)
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        page.open_conversation(other)
    assert blocker.args[0].conversation_id == first
    assert page.message_widgets() == []
    assert [m.status for m in store.messages(first)][-1] == storage.STATUS_STOPPED
    page.open_conversation(first)
    assert [w.role for w in page.message_widgets()] == ["user", "assistant"] * 2
    assert not any(w.streaming for w in page.message_widgets())


def test_reply_metrics_give_a_quick_first_token_in_milliseconds() -> None:
    quick = chat_page.format_metrics({"generated_tokens": 9, "ttft_seconds": 0.0062,
                                      "generation_tokens_per_second": 70.0,
                                      "prompt_tokens": 37, "cached_tokens": 37}, "m.gguf")
    assert quick == ("9 tokens · first token 6 ms · 70.0 tok/s · 37 of 37 prompt tokens "
                     "cached · m.gguf")
    slow = chat_page.format_metrics({"generated_tokens": 9, "ttft_seconds": 6.23}, None)
    assert slow == "9 tokens · first token 6.23 s · 0.0 tok/s"


def test_a_message_typed_in_one_conversation_is_read_again_in_the_one_opened(
        qtbot: QtBot, make_page: MakePage, store: Storage) -> None:
    page = make_page(max_tokens=8)
    _send(qtbot, page, "First conversation")
    first = page.conversation_id
    page.new_conversation()
    _send(qtbot, page, "Second conversation")
    with qtbot.waitSignal(page.engine.read_ahead_ended, timeout=60_000):
        qtbot.keyClicks(page.composer, "Which one am I in?")
    assert first is not None
    with qtbot.waitSignal(page.engine.read_ahead_ended, timeout=60_000):
        page.open_conversation(first)  # the text did not change; its conversation did
    with qtbot.waitSignal(page.reply_finished, timeout=60_000) as blocker:
        qtbot.keyClick(page.composer, Qt.Key.Key_Return)
    metrics = blocker.args[0].metrics
    assert metrics["cached_tokens"] == metrics["prompt_tokens"]
    assert [m.content for m in store.messages(first)][2] == "Which one am I in?"
