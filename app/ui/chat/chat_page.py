"""The chat page: pick a model, talk to it, keep every conversation.

The page is a view of a ``ChatSession`` (``app.pipeline.chat_session``), which owns the reply
life cycle and the storage rules: widgets show the session's state and forward intent (send,
stop, regenerate, edit, open). Engine events go to the session first; the page draws what it
says changed. The engine runs in its own process: if it dies, this page shows why and offers to
reload; nothing already on screen is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.core import load_stats, memory, storage, store_reads
from app.core.gguf_info import ModelInfo, read_model_info
from app.core.hardware import HardwareProfile
from app.core.load_stats import LoadRecord
from app.core.settings import Settings
from app.jobs.engine_client import READING_INTERVAL, EngineClient
from app.jobs.task import Task
from app.pipeline.chat_session import (
    ChatSession,
    Crashed,
    EngineError,
    Failed,
    Loaded,
    LoadSettings,
    Reply,
    ReplyEnded,
    ReplyText,
    Sampling,
    SessionBusy,
    SessionError,
    Started,
    status_text,
)
from app.ui.chat.composer import Composer
from app.ui.chat.conversation_list import ConversationList
from app.ui.chat.message_widget import MessageWidget
from app.ui.chat.model_bar import LoadChoice, ModelBar
from app.ui.chat.settings_dialog import ConversationSettingsDialog

log = logging.getLogger(__name__)

# Drawing a reply being written takes the window's time on a core llama.cpp's threads may be
# using: a fast model writing one long paragraph had the window use 9% of a core, which made
# the reply 7-10% slower on a 2-core machine. Redraws are spaced so that the window's work
# while a reply streams stays near REDRAW_SHARE of a core: READING_INTERVAL apart while drawing
# is cheap (under 2 ms a redraw), further apart as it gets dearer (a long paragraph, a slow
# machine), never more than MAX_REDRAW_INTERVAL.
REDRAW_SHARE = 0.05
MAX_REDRAW_INTERVAL = 0.25
# Typing that pauses this long lets the engine read the message so far (ChatSession.read_ahead):
# short enough that a pause to think, or a paste, starts it; long enough that steady typing
# (keys 100-250 ms apart) does not start one at every key.
READ_AHEAD_PAUSE_MS = 400


def format_metrics(metrics: dict[str, Any], model: str | None) -> str:
    """'42 tokens · first token 200 ms · 57.1 tok/s · 480 of 512 prompt tokens cached ·
    SmolLM2…' under a reply (the cache part when the reply reused any; the first token's time
    in seconds from one second: a message read while typed answers in a few milliseconds)."""
    ttft = float(metrics.get("ttft_seconds", 0.0))
    parts = [f"{metrics.get('generated_tokens', 0)} tokens",
             f"first token {ttft * 1000:.0f} ms" if ttft < 1 else f"first token {ttft:.2f} s",
             f"{metrics.get('generation_tokens_per_second', 0.0):.1f} tok/s"]
    cached = int(metrics.get("cached_tokens", 0))
    if cached:
        parts.append(f"{cached:,} of {int(metrics.get('prompt_tokens', 0)):,} prompt tokens "
                     "cached")
    if model:
        parts.append(model)
    return " · ".join(parts)


class ChatPage(QWidget):
    """Conversations on the left; the model bar, messages and composer on the right."""

    reply_finished = Signal(object)  # the stored storage.Message
    reply_ended = Signal(object)  # the session's Reply, saved or not
    model_loaded = Signal(object)  # Loaded
    load_measured = Signal(object)  # app.core.load_stats.LoadRecord
    engine_error = Signal(str)

    def __init__(self, store: storage.Storage, engine: EngineClient, settings: Settings,
                 default_model: Path | None, default_label: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.engine = engine
        self.settings = settings
        self.profile: HardwareProfile | None = None
        self.model_info: ModelInfo | None = None
        # text events on demand: one per redraw (_ask_for_text), none that nothing would show
        self.session = ChatSession(engine, store, self._default_sampling, on_demand=True)
        self._reply_widget: MessageWidget | None = None  # the shown reply being written
        self._requested_model: str | None = None
        self._load_choice = LoadChoice(settings.n_ctx, settings.n_gpu_layers, settings.threads,
                                       settings.flash_attn, settings.kv_type)

        root = QHBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.setSpacing(0)
        self.conversations = ConversationList(store)
        self.conversations.selected.connect(self.open_conversation)
        self.conversations.new_requested.connect(self.new_conversation)
        self.conversations.deleted.connect(self._conversation_deleted)
        root.addWidget(self.conversations)

        right = QVBoxLayout()
        right.setSpacing(0)
        root.addLayout(right, 1)
        self.model_bar = ModelBar(self._load_choice)
        self.model_bar.model_chosen.connect(self.load_model)
        self.model_bar.settings_changed.connect(self._load_settings_changed)
        right.addWidget(self.model_bar)

        self.banner = QFrame()
        self.banner.setObjectName("Banner")
        banner_layout = QHBoxLayout(self.banner)
        self.banner_text = QLabel()
        self.banner_text.setWordWrap(True)
        self.banner_text.setObjectName("Warning")
        banner_layout.addWidget(self.banner_text, 1)
        self.reload_button = QPushButton("Reload model")
        self.reload_button.clicked.connect(self.reload_model)
        banner_layout.addWidget(self.reload_button)
        self.banner.hide()
        right.addWidget(self.banner)

        self.message_scroll = QScrollArea()
        self.message_scroll.setWidgetResizable(True)
        self.message_scroll.setFrameShape(QFrame.Shape.NoFrame)
        # The scroll bar is there whenever there are messages (_show_scroll_bar): with one
        # shown only as needed, the scroll area lays the conversation out at two widths (with
        # and without it) at every redraw of a reply being written.
        self.message_scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.messages_host = QWidget()
        self.messages_layout = QVBoxLayout(self.messages_host)
        self.messages_layout.setContentsMargins(16, 12, 16, 12)
        self.messages_layout.setSpacing(10)
        # what an empty conversation shows: where to type, and where the rest is
        self.empty_hint = QLabel(
            "Type a message below and press Enter: the model named above answers here, on "
            "this machine.\n\nOther models are on the Models page. The Quantize wizard makes "
            "smaller, faster versions of a model and measures what each one loses.")
        self.empty_hint.setObjectName("Muted")
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setContentsMargins(40, 80, 40, 0)
        self.messages_layout.addWidget(self.empty_hint)
        self.messages_layout.addStretch()
        self.message_scroll.setWidget(self.messages_host)
        right.addWidget(self.message_scroll, 1)
        # The view follows the conversation's end as it grows (a reply being written, a
        # conversation opened) while it is at the end; a reader who scrolls up stays where they
        # are until they scroll back down or send.
        self._follow_end = True
        bar = self.message_scroll.verticalScrollBar()
        bar.rangeChanged.connect(self._keep_end)
        bar.valueChanged.connect(self._scrolled)
        # shown over the conversation while there is more below a reader who scrolled up
        self.latest_button = QPushButton("↓ Latest", self.message_scroll)
        self.latest_button.setToolTip("Go to the end of the conversation and follow it")
        self.latest_button.clicked.connect(self._scroll_to_end)
        self.latest_button.hide()

        bottom = QHBoxLayout()
        bottom.setContentsMargins(12, 8, 12, 12)
        self.composer = Composer()
        self.composer.send_requested.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        # a pause in typing lets the engine read the message so far (Settings.read_ahead)
        self._read_ahead_timer = QTimer(self)
        self._read_ahead_timer.setSingleShot(True)
        self._read_ahead_timer.setInterval(READ_AHEAD_PAUSE_MS)
        self._read_ahead_timer.timeout.connect(self._read_ahead)
        self.composer.textChanged.connect(self._typed)
        bottom.addWidget(self.composer, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(lambda: self.send(self.composer.toPlainText().strip()))
        buttons.addWidget(self.send_button)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        buttons.addWidget(self.stop_button)
        self.settings_button = QPushButton("Settings…")
        self.settings_button.clicked.connect(self.edit_conversation_settings)
        buttons.addWidget(self.settings_button)
        bottom.addLayout(buttons)
        right.addLayout(bottom)
        self.hint = QLabel()  # why a request was not taken ("a reply is still being written")
        self.hint.setObjectName("Muted")
        self.hint.setContentsMargins(12, 0, 12, 8)
        self.hint.hide()
        right.addWidget(self.hint)

        # A streaming reply is redrawn when its text comes, and the next text is asked for at
        # once, or this long after when redrawing is dear (REDRAW_SHARE; the engine sends none
        # before: ChatSession's on_demand): at most 25 times a second, less often when dear.
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(round(READING_INTERVAL * 1000))
        self._render_timer.timeout.connect(self._ask_for_text)
        self._redraw_cpu = 0.0  # the window's CPU time at the last redraw (or reply start)
        self._redraw_cost = 0.0  # its CPU time per redraw (averaged) while a reply streams

        engine.load_progress.connect(self.model_bar.show_progress)
        engine.loaded.connect(self._loaded)
        engine.load_failed.connect(self._load_failed)
        engine.engine_event.connect(self._engine_event)

        recent = store.conversations()
        if recent:
            self.open_conversation(recent[0].id)
        if default_model is not None:
            self.model_bar.add_model(default_model, default_label)
            self.model_bar.select(default_model)
            self.load_model(str(default_model))
        else:
            self.model_bar.show_status("No model: open a GGUF file to start")

    # --- models -------------------------------------------------------------------------------

    def set_hardware(self, profile: HardwareProfile) -> None:
        """The machine's profile, for the 'auto' GPU-layer choice."""
        self.profile = profile

    @property
    def conversation_id(self) -> int | None:
        """The conversation shown (None: a new one, created by its first message)."""
        return self.session.conversation_id

    def load_model(self, path: str) -> None:
        """Inspect the file (in the background), then load it in the engine."""
        if self.session.busy:
            self.model_bar.show_status("Stop the reply before switching models")
            return
        self._requested_model = path
        self.model_bar.show_progress(0.0)
        task = Task(lambda: read_model_info(path))
        task.finished.connect(self._inspected)
        task.failed.connect(self._load_failed)
        task.start()

    def _inspected(self, info: ModelInfo) -> None:
        if str(info.path) != self._requested_model:
            return  # another model was chosen meanwhile
        self.model_info = info
        self.model_bar.model_info = info
        choice = self._load_choice
        n_ctx = min(choice.n_ctx, info.n_ctx_train or choice.n_ctx)
        # Other machines (RPC servers): the plan's, which split its layers over them; with a
        # layer count chosen by hand, every server in the settings.
        servers: tuple[str, ...] = ()
        if choice.gpu_layers != "auto":
            layers = int(choice.gpu_layers)
            servers = tuple(self.settings.rpc_servers)
        elif self.profile is not None:
            fit = memory.plan(info, self.profile, n_ctx=n_ctx, kv_type=choice.kv_type,
                              flash_attn=memory.flash_setting(choice.flash_attn))
            layers, servers = fit.n_gpu_layers, fit.rpc_servers
        else:
            layers = 0  # the hardware probe has not answered yet: the CPU is always there
        kv = None if choice.kv_type == "f16" else choice.kv_type
        settings = LoadSettings(str(info.path), n_ctx=n_ctx, n_gpu_layers=layers,
                                n_threads=choice.threads, flash_attn=choice.flash_attn,
                                type_k=kv, type_v=kv, rpc_servers=servers)
        try:
            self.engine.load(settings)
        except EngineError as exc:
            self._load_failed(str(exc))

    def reload_model(self) -> None:
        """Load the last chosen model again (after a crash)."""
        self.banner.hide()
        path = self._requested_model or self.model_bar.current_path()
        if path:
            self.load_model(path)

    def _load_settings_changed(self, choice: LoadChoice) -> None:
        self._load_choice = choice
        self.settings.n_ctx, self.settings.n_gpu_layers = choice.n_ctx, choice.gpu_layers
        self.settings.threads = choice.threads
        self.settings.flash_attn, self.settings.kv_type = choice.flash_attn, choice.kv_type
        self.reload_model()

    def _loaded(self, loaded: Loaded) -> None:
        name = Path(loaded.path).name
        where = ("CPU" if loaded.n_gpu_layers == 0 else
                 "GPU" if loaded.n_gpu_layers < 0 else f"{loaded.n_gpu_layers} layers on GPU")
        self.model_bar.show_status(f"{name} · context {loaded.n_ctx:,} · {where} · "
                                   f"loaded in {loaded.load_seconds:.1f} s")
        self.banner.hide()
        self._read_draft()  # a message typed while the model loaded
        self.model_loaded.emit(loaded)
        self._record_load(loaded)

    def _record_load(self, loaded: Loaded) -> None:
        """Keep the estimate against what this load measured (off the UI thread: it reads the
        model's header and writes the database), for the Models and Hardware pages."""
        features = self.profile.repacking_features if self.profile is not None else ()
        kv_type = self._load_choice.kv_type
        flash = memory.flash_setting(self._load_choice.flash_attn)

        def record() -> LoadRecord:
            return store_reads.read(lambda store: load_stats.record_loaded_model(
                store, loaded.path, n_ctx=loaded.n_ctx, n_gpu_layers=loaded.n_gpu_layers,
                measured_rss=loaded.rss_bytes - loaded.rss_before_bytes,
                measured_gpu=loaded.gpu_bytes, cpu_features=features, kv_type=kv_type,
                flash_attn=flash, n_seq=loaded.n_parallel))

        task = Task(record)
        task.finished.connect(self._load_recorded)
        task.failed.connect(self._load_not_recorded)
        task.start()

    def _load_recorded(self, record: LoadRecord) -> None:
        self.model_bar.status.setToolTip(f"Memory of this load — {record.text()}")
        self.load_measured.emit(record)

    def _load_not_recorded(self, message: str) -> None:
        log.warning("the load's memory could not be recorded: %s", message)

    def _load_failed(self, message: str) -> None:
        self.model_bar.show_status("Not loaded")
        self._show_banner(message, reload=False)
        self.engine_error.emit(message)

    def _show_banner(self, message: str, reload: bool) -> None:
        self.banner_text.setText(message)
        self.reload_button.setVisible(reload)
        self.banner.show()

    # --- conversations ------------------------------------------------------------------------

    def new_conversation(self) -> None:
        """Start an empty conversation (created in the database on the first message)."""
        self.session.new()
        self._clear_messages()
        self.conversations.list.clearSelection()
        self.composer.setFocus()
        self._read_draft()

    def open_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation (a reply being written for another one is stopped and
        saved to its own conversation)."""
        self.session.open(conversation_id)
        self._redraw()
        self.conversations.reload(select=conversation_id)
        self._read_draft()

    def _conversation_deleted(self, conversation_id: int) -> None:
        # what the engine keeps of conversations (in memory and on disk) holds their text
        self.engine.forget()
        if conversation_id == self.conversation_id:
            self.new_conversation()

    def _default_sampling(self) -> Sampling:
        s = self.settings
        return Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                        repeat_penalty=s.repeat_penalty, max_tokens=s.max_tokens)

    def edit_conversation_settings(self) -> None:
        """System prompt and sampling for this conversation."""
        system = (self.store.conversation(self.conversation_id).system_prompt
                  if self.conversation_id is not None else "")
        dialog = ConversationSettingsDialog(system, self.session.sampling(),
                                            self.settings.read_ahead, self)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        self.settings.read_ahead = dialog.read_ahead.isChecked()
        conv_id = self.conversation_id
        if conv_id is None:
            conv_id = self.store.create_conversation("New chat").id
            self.session.open(conv_id)
            self.conversations.reload(select=conv_id)
        sampling = asdict(dialog.sampling())
        sampling["stop"] = list(sampling["stop"])
        self.store.update_conversation(conv_id, system_prompt=dialog.system_prompt.toPlainText(),
                                       sampling=sampling)

    # --- intent -------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send the text and start its reply; when that cannot be, say why and keep the text."""
        if not text.strip():
            return
        started = self._ask(lambda: self.session.send(text))
        if started is None:
            return
        self._read_ahead_timer.stop()
        self.composer.clear()
        if started.user is not None:
            self._add_widget("user", started.user.content, started.user.id)
        self.conversations.reload(select=self.conversation_id)
        self._show_reply(started.reply)

    def _typed(self) -> None:
        if self.settings.read_ahead and not self.session.busy:
            self._read_ahead_timer.start()

    def _read_draft(self) -> None:
        """The message box holds a message whose conversation or model changed, or that was
        typed while a reply was written: read it after the usual pause."""
        if self.composer.toPlainText().strip():
            self._typed()

    def _read_ahead(self) -> None:
        """Have the engine read the message typed so far (``ChatSession.read_ahead``)."""
        if self.settings.read_ahead:
            self.session.read_ahead(self.composer.toPlainText())

    def stop(self) -> None:
        """Stop the running reply; what was generated is kept."""
        self.session.stop()
        self._show_state()

    def regenerate(self) -> None:
        """Replace the last reply with a new one."""
        if self._ask(self.session.regenerate) is not None:
            self._redraw()  # the old reply is gone, the new one is being written

    def edit_and_resend(self, message_id: int, new_text: str | None = None) -> None:
        """Change a user message, drop everything after it, and generate again."""
        if self.session.busy:
            self._hint("A reply is still being written: stop it first.")
            return
        if new_text is None:
            current = self.store.message(message_id).content
            new_text, ok = QInputDialog.getMultiLineText(self, "Edit message", "Message:",
                                                         current)
            if not ok:
                return
        text = new_text
        if self._ask(lambda: self.session.edit_and_resend(message_id, text)) is not None:
            self._redraw()  # the later messages are gone, the new reply is being written

    def _ask(self, request: Callable[[], Started]) -> Started | None:
        """Forward a request to the session; show why when it is refused."""
        try:
            started = request()
        except SessionBusy as exc:
            self._hint(str(exc))
            return None
        except SessionError as exc:
            if self.engine.current is None:
                self._show_banner(str(exc), reload=bool(self._requested_model))
            else:
                self._hint(str(exc))
            return None
        except EngineError as exc:
            self._show_banner(str(exc), reload=True)
            return None
        self.hint.hide()
        return started

    def _hint(self, text: str) -> None:
        self.hint.setText(text)
        self.hint.show()

    # --- what the session says ----------------------------------------------------------------

    def _engine_event(self, event: object) -> None:
        update = self.session.handle(event)
        if isinstance(update, ReplyText) and not self._render_timer.isActive():
            # the text asked for (or the reply's first): drawn now, the next asked for
            self._render_reply()
            self._ask_for_next_text()
        elif isinstance(update, ReplyEnded):
            self._reply_ended(update.reply)
        if isinstance(event, Crashed):
            message = event.message + " Your conversation is saved; reload the model to go on."
            self.model_bar.show_status("Engine stopped")
            self._show_banner(message, reload=True)
            self.engine_error.emit(message)
        elif isinstance(event, Failed) and event.request_id is not None and \
                isinstance(update, ReplyEnded):
            self._show_banner(event.message, reload=False)
            self.engine_error.emit(event.message)

    def _ask_for_next_text(self) -> None:
        """While redrawing is cheap, ask for the next text at once: the engine sends it
        READING_INTERVAL after the last, as soon as there is any. When it is dear, ask after
        the interval the redraws are spaced by (``_pace_redraws``)."""
        if self._render_timer.interval() <= round(READING_INTERVAL * 1000):
            self._ask_for_text()
        else:
            self._render_timer.start()

    def _ask_for_text(self) -> None:
        """Ask the engine for the text written since the last redraw (it comes as an event,
        drawn at once). Asked for while no view shows the reply too (its conversation being
        drawn again), so that the session's reply stays current."""
        if self.session.reply is not None:
            self.engine.more()

    def _render_reply(self) -> None:
        reply = self.session.reply
        if reply is not None and self._reply_widget is not None:
            self._pace_redraws()
            self._reply_widget.show_streaming(reply.text)

    def _pace_redraws(self, first: bool = False) -> None:
        """Space the next redraw so that the window's work per redraw (drawing the reply,
        laying it out, the engine's events meanwhile: this thread's CPU time since the last
        redraw, averaged over the last few so that one dear redraw does not stall the next) is
        about REDRAW_SHARE of the time between redraws."""
        now = time.thread_time()  # the GUI thread's CPU time: what competes with llama.cpp
        if first:
            self._redraw_cost = 0.0
        else:
            spent = now - self._redraw_cpu
            self._redraw_cost = spent if not self._redraw_cost else (
                self._redraw_cost + spent) / 2
        self._redraw_cpu = now
        interval = min(max(self._redraw_cost / REDRAW_SHARE, READING_INTERVAL),
                       MAX_REDRAW_INTERVAL)
        self._render_timer.setInterval(round(interval * 1000))

    def _reply_ended(self, reply: Reply) -> None:
        self._render_timer.stop()
        widget, self._reply_widget = self._reply_widget, None
        if widget is not None and reply.conversation_id == self.conversation_id:
            status = status_text(reply.status or "", reply.error)
            if reply.save_error:
                status = " ".join(p for p in (status, f"Not saved: {reply.save_error}.") if p)
            widget.message_id = reply.message.id if reply.message else None
            metrics = asdict(reply.metrics) if reply.metrics else None
            widget.finish(reply.text, format_metrics(metrics, reply.model) if metrics else "",
                          status)
        self._show_state()
        self._read_draft()  # a message typed while the reply was written is read after it
        self.conversations.reload(select=self.conversation_id)
        self.reply_ended.emit(reply)
        if reply.message is not None:
            self.reply_finished.emit(reply.message)

    def _show_reply(self, reply: Reply) -> None:
        self._reply_widget = self._add_widget("assistant", "")
        self._pace_redraws(first=True)
        self._reply_widget.show_streaming(reply.text)
        self._show_state()

    def _redraw(self) -> None:
        """Draw the open conversation as stored, and its reply if one is being written."""
        self._clear_messages()
        for msg in self.session.messages():
            widget = self._add_widget(msg.role, msg.content, msg.id)
            if msg.role == "assistant":
                # no metrics (a reply cut short by a crash): no line of zeros, as when it ended
                widget.set_meta(format_metrics(msg.metrics, msg.model) if msg.metrics
                                else msg.model or "")
                widget.set_status(status_text(msg.status, msg.error))
        reply = self.session.reply
        if reply is not None and reply.conversation_id == self.conversation_id:
            self._show_reply(reply)
        self._show_state()

    def _show_state(self) -> None:
        """Buttons follow the session: one reply at a time, Stop only while one is written."""
        busy = self.session.busy
        self.stop_button.setEnabled(busy)
        self.send_button.setEnabled(not busy)
        widgets = self.message_widgets()
        for widget in widgets:
            widget.regenerate_button.hide()
            widget.edit_button.setEnabled(not busy)
        if widgets and widgets[-1].role == "assistant" and not busy:
            widgets[-1].regenerate_button.show()

    # --- view helpers -------------------------------------------------------------------------

    def message_widgets(self) -> list[MessageWidget]:
        """The message widgets shown, in order."""
        widgets = []
        for i in range(self.messages_layout.count()):
            item = self.messages_layout.itemAt(i)
            widget = item.widget() if item is not None else None
            if isinstance(widget, MessageWidget):
                widgets.append(widget)
        return widgets

    def _add_widget(self, role: str, text: str, message_id: int | None = None) -> MessageWidget:
        widget = MessageWidget(role, text, message_id)
        widget.edit_requested.connect(self.edit_and_resend)
        widget.regenerate_requested.connect(self.regenerate)
        self.messages_layout.insertWidget(self.messages_layout.count() - 1, widget)
        self.empty_hint.hide()
        self._show_scroll_bar(True)
        self._scroll_to_end()
        return widget

    def _show_scroll_bar(self, shown: bool) -> None:
        policy = Qt.ScrollBarPolicy
        self.message_scroll.setVerticalScrollBarPolicy(
            policy.ScrollBarAlwaysOn if shown else policy.ScrollBarAlwaysOff)

    def _clear_messages(self) -> None:
        self._reply_widget = None
        for widget in self.message_widgets():
            self.messages_layout.removeWidget(widget)
            widget.deleteLater()
        self.empty_hint.show()
        self._show_scroll_bar(False)

    def _scroll_to_end(self) -> None:
        """Show the conversation's end, and follow it from now on."""
        self._follow_end = True
        bar = self.message_scroll.verticalScrollBar()
        bar.setValue(bar.maximum())  # and again when the layout has grown (_keep_end)

    def _keep_end(self, _minimum: int, maximum: int) -> None:
        if self._follow_end:
            self.message_scroll.verticalScrollBar().setValue(maximum)
        self._show_latest_button()

    def _scrolled(self, value: int) -> None:
        self._follow_end = value >= self.message_scroll.verticalScrollBar().maximum() - 8
        self._show_latest_button()

    def _show_latest_button(self) -> None:
        button = self.latest_button
        if self._follow_end:
            button.hide()
            return
        size = button.sizeHint()
        area = self.message_scroll.viewport().geometry()
        button.setGeometry(area.right() - size.width() - 16, area.bottom() - size.height() - 12,
                           size.width(), size.height())
        button.show()
        button.raise_()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._show_latest_button()

    def shutdown(self) -> None:
        """Save a reply in progress as stopped, then end the engine."""
        self.session.close()
        self.engine.shutdown()
