"""The chat page: pick a model, talk to it, keep every conversation.

Storage rules: the user's message is written when sent; a reply is written when it ends —
complete, stopped by the user, or cut short by an engine failure (status 'partial', with the
error). The engine runs in its own process: if it dies, this page shows why and offers to
reload; nothing already on screen is lost.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer, Signal
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

from app.core import memory, storage
from app.core.gguf_info import ModelInfo, read_model_info
from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.engine.host import Crashed, EngineError
from app.engine.protocol import ChatMessage, Loaded, LoadSettings, ReplyDone, Sampling
from app.jobs.engine_client import EngineClient
from app.jobs.task import Task
from app.ui.chat.composer import Composer
from app.ui.chat.conversation_list import ConversationList
from app.ui.chat.message_widget import MessageWidget
from app.ui.chat.model_bar import LoadChoice, ModelBar
from app.ui.chat.settings_dialog import ConversationSettingsDialog

log = logging.getLogger(__name__)
_SAMPLING_FIELDS = {f.name for f in fields(Sampling)}


@dataclass
class _Pending:
    """The reply being generated."""

    request_id: int
    conversation_id: int
    widget: MessageWidget
    model: str
    sampling: Sampling
    text: str = ""


def format_metrics(metrics: dict[str, Any], model: str | None) -> str:
    """'42 tokens · first token 0.20 s · 57.1 tok/s · SmolLM2…' under a reply."""
    parts = [f"{metrics.get('generated_tokens', 0)} tokens",
             f"first token {metrics.get('ttft_seconds', 0.0):.2f} s",
             f"{metrics.get('generation_tokens_per_second', 0.0):.1f} tok/s"]
    if model:
        parts.append(model)
    return " · ".join(parts)


class ChatPage(QWidget):
    """Conversations on the left; the model bar, messages and composer on the right."""

    reply_finished = Signal(object)  # the stored storage.Message
    model_loaded = Signal(object)  # Loaded
    engine_error = Signal(str)

    def __init__(self, store: storage.Storage, engine: EngineClient, settings: Settings,
                 default_model: Path | None, default_label: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.engine = engine
        self.settings = settings
        self.profile: HardwareProfile | None = None
        self.conversation_id: int | None = None
        self.model_info: ModelInfo | None = None
        self._pending: _Pending | None = None
        self._requested_model: str | None = None
        self._load_choice = LoadChoice(settings.n_ctx, settings.n_gpu_layers, settings.threads)

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
        self.messages_host = QWidget()
        self.messages_layout = QVBoxLayout(self.messages_host)
        self.messages_layout.setContentsMargins(16, 12, 16, 12)
        self.messages_layout.setSpacing(10)
        self.messages_layout.addStretch()
        self.message_scroll.setWidget(self.messages_host)
        right.addWidget(self.message_scroll, 1)

        bottom = QHBoxLayout()
        bottom.setContentsMargins(12, 8, 12, 12)
        self.composer = Composer()
        self.composer.send_requested.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
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

        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(40)  # redraw a streaming reply at most 25 times a second
        self._render_timer.timeout.connect(self._render_pending)

        engine.load_progress.connect(self.model_bar.show_progress)
        engine.loaded.connect(self._loaded)
        engine.load_failed.connect(self._load_failed)
        engine.token.connect(self._token)
        engine.reply_done.connect(self._reply_done)
        engine.reply_failed.connect(self._reply_failed)
        engine.crashed.connect(self._crashed)

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

    def load_model(self, path: str) -> None:
        """Inspect the file (in the background), then load it in the engine."""
        if self.engine.busy:
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
        choice = self._load_choice
        n_ctx = min(choice.n_ctx, info.n_ctx_train or choice.n_ctx)
        if choice.gpu_layers != "auto":
            layers = int(choice.gpu_layers)
        elif self.profile is not None:
            layers = memory.plan(info, self.profile, n_ctx=n_ctx).n_gpu_layers
        else:
            layers = 0  # the hardware probe has not answered yet: the CPU is always there
        settings = LoadSettings(str(info.path), n_ctx=n_ctx, n_gpu_layers=layers,
                                n_threads=choice.threads)
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
        self.reload_model()

    def _loaded(self, loaded: Loaded) -> None:
        name = Path(loaded.path).name
        where = ("CPU" if loaded.n_gpu_layers == 0 else
                 "GPU" if loaded.n_gpu_layers < 0 else f"{loaded.n_gpu_layers} layers on GPU")
        self.model_bar.show_status(f"{name} · context {loaded.n_ctx:,} · {where} · "
                                   f"loaded in {loaded.load_seconds:.1f} s")
        self.banner.hide()
        self.model_loaded.emit(loaded)

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
        self.conversation_id = None
        self._clear_messages()
        self.conversations.list.clearSelection()
        self.composer.setFocus()

    def open_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation."""
        if self._pending is not None and self._pending.conversation_id != conversation_id:
            self.stop()  # its reply is saved to its own conversation when it ends
        self.conversation_id = conversation_id
        self._clear_messages()
        messages = self.store.messages(conversation_id)
        for msg in messages:
            widget = self._add_widget(msg.role, msg.content, msg.id)
            if msg.role == "assistant":
                widget.set_meta(format_metrics(msg.metrics or {}, msg.model))
                widget.set_status(self._status_text(msg.status, msg.error))
        self._update_regenerate()
        self.conversations.reload(select=conversation_id)

    def _conversation_deleted(self, conversation_id: int) -> None:
        if conversation_id == self.conversation_id:
            self.new_conversation()

    def _sampling(self) -> Sampling:
        if self.conversation_id is not None:
            stored = self.store.conversation(self.conversation_id).sampling
            if stored:
                values = {k: v for k, v in stored.items() if k in _SAMPLING_FIELDS}
                values["stop"] = tuple(values.get("stop", ()))
                return Sampling(**values)
        s = self.settings
        return Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                        repeat_penalty=s.repeat_penalty, max_tokens=s.max_tokens)

    def edit_conversation_settings(self) -> None:
        """System prompt and sampling for this conversation."""
        system = (self.store.conversation(self.conversation_id).system_prompt
                  if self.conversation_id is not None else "")
        dialog = ConversationSettingsDialog(system, self._sampling(), self)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        conv_id = self._ensure_conversation("New chat")
        sampling = asdict(dialog.sampling())
        sampling["stop"] = list(sampling["stop"])
        self.store.update_conversation(conv_id, system_prompt=dialog.system_prompt.toPlainText(),
                                       sampling=sampling)

    def _ensure_conversation(self, first_text: str) -> int:
        if self.conversation_id is None:
            title = " ".join(first_text.split())[:48] or "New chat"
            self.conversation_id = self.store.create_conversation(title).id
            self.conversations.reload(select=self.conversation_id)
        return self.conversation_id

    # --- sending and receiving ----------------------------------------------------------------

    def send(self, text: str) -> None:
        """Save the user's message and start the reply."""
        if not text:
            return
        if self.engine.busy:
            return  # one reply at a time; Stop first
        if self.engine.current is None:
            self._show_banner("No model is loaded yet: wait for it to load, or pick one above.",
                              reload=bool(self._requested_model))
            return
        conv_id = self._ensure_conversation(text)
        message = self.store.add_message(conv_id, "user", text)
        self._add_widget("user", text, message.id)
        self.composer.clear()
        self._generate()

    def _history(self) -> list[ChatMessage]:
        assert self.conversation_id is not None
        conv = self.store.conversation(self.conversation_id)
        history = [ChatMessage("system", conv.system_prompt)] if conv.system_prompt else []
        history += [ChatMessage(m.role, m.content) for m in self.store.messages(conv.id)
                    if m.content or m.role != "assistant"]
        return history

    def _generate(self) -> None:
        assert self.conversation_id is not None
        sampling = self._sampling()
        loaded = self.engine.current
        model = Path(loaded.path).name if loaded else "?"
        try:
            request_id = self.engine.chat(self._history(), sampling)
        except EngineError as exc:
            self._show_banner(str(exc), reload=True)
            return
        widget = self._add_widget("assistant", "")
        widget.show_streaming("")
        self._pending = _Pending(request_id, self.conversation_id, widget, model, sampling)
        self._set_generating(True)
        self._update_regenerate()

    def stop(self) -> None:
        """Stop the running reply; what was generated is kept."""
        if self._pending is not None:
            self.engine.stop()

    def _token(self, request_id: int, text: str) -> None:
        if self._pending is None or request_id != self._pending.request_id:
            return
        self._pending.text += text
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render_pending(self) -> None:
        if self._pending is not None:
            self._pending.widget.show_streaming(self._pending.text)
            self._scroll_to_end()

    def _finish(self, text: str, status: str, error: str | None,
                metrics: dict[str, Any] | None) -> None:
        pending = self._pending
        assert pending is not None
        self._pending = None
        self._render_timer.stop()
        self._set_generating(False)
        sampling = asdict(pending.sampling)
        sampling["stop"] = list(sampling["stop"])
        saved = self.store.add_message(pending.conversation_id, "assistant", text, status=status,
                                       error=error, model=pending.model, sampling=sampling,
                                       metrics=metrics)
        widget = pending.widget
        if pending.conversation_id == self.conversation_id:
            widget.message_id = saved.id
            widget.finish(text, format_metrics(metrics, pending.model) if metrics else "",
                          self._status_text(status, error))
            self._update_regenerate()
            self._scroll_to_end()
        else:
            widget.deleteLater()  # the user moved to another conversation meanwhile
        self.conversations.reload(select=self.conversation_id)
        self.reply_finished.emit(saved)

    def _reply_done(self, done: ReplyDone) -> None:
        if self._pending is None or done.request_id != self._pending.request_id:
            return
        status = storage.STATUS_STOPPED if done.finish_reason == "stopped" else \
            storage.STATUS_COMPLETE
        self._finish(done.text, status, None, asdict(done.metrics))

    def _reply_failed(self, request_id: int, message: str) -> None:
        if self._pending is None or request_id != self._pending.request_id:
            return
        self._finish(self._pending.text, storage.STATUS_PARTIAL, message, None)
        self._show_banner(message, reload=False)
        self.engine_error.emit(message)

    def _crashed(self, crash: Crashed) -> None:
        message = crash.message + " Your conversation is saved; reload the model to go on."
        if self._pending is not None:
            self._finish(self._pending.text, storage.STATUS_PARTIAL, crash.message, None)
        self.model_bar.show_status("Engine stopped")
        self._show_banner(message, reload=True)
        self.engine_error.emit(message)

    @staticmethod
    def _status_text(status: str, error: str | None) -> str:
        if status == storage.STATUS_STOPPED:
            return "Stopped."
        if status == storage.STATUS_PARTIAL:
            return f"Incomplete: {error or 'the reply was cut short'}"
        return ""

    # --- regenerate and edit ------------------------------------------------------------------

    def regenerate(self) -> None:
        """Replace the last reply with a new one."""
        if self.engine.busy or self.conversation_id is None:
            return
        messages = self.store.messages(self.conversation_id)
        if not messages or messages[-1].role != "assistant":
            return
        self.store.delete_messages_from(self.conversation_id, messages[-1].id)
        self.open_conversation(self.conversation_id)
        self._generate()

    def edit_and_resend(self, message_id: int, new_text: str | None = None) -> None:
        """Change a user message, drop everything after it, and generate again."""
        if self.engine.busy or self.conversation_id is None:
            return
        msg = self.store.message(message_id)
        if new_text is None:
            new_text, ok = QInputDialog.getMultiLineText(self, "Edit message", "Message:",
                                                         msg.content)
            if not ok:
                return
        if not new_text.strip():
            return
        later = [m for m in self.store.messages(self.conversation_id) if m.id > message_id]
        if later:
            self.store.delete_messages_from(self.conversation_id, later[0].id)
        self.store.edit_message(message_id, new_text.strip())
        self.open_conversation(self.conversation_id)
        self._generate()

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
        widget.edit_requested.connect(lambda mid: self.edit_and_resend(mid))
        widget.regenerate_requested.connect(self.regenerate)
        self.messages_layout.insertWidget(self.messages_layout.count() - 1, widget)
        self._scroll_to_end()
        return widget

    def _clear_messages(self) -> None:
        for widget in self.message_widgets():
            if self._pending is None or widget is not self._pending.widget:
                self.messages_layout.removeWidget(widget)
                widget.deleteLater()

    def _update_regenerate(self) -> None:
        widgets = self.message_widgets()
        for widget in widgets:
            widget.regenerate_button.hide()
            widget.edit_button.setEnabled(self._pending is None)
        if widgets and widgets[-1].role == "assistant" and self._pending is None:
            widgets[-1].regenerate_button.show()

    def _set_generating(self, on: bool) -> None:
        self.stop_button.setEnabled(on)
        self.send_button.setEnabled(not on)

    def _scroll_to_end(self) -> None:
        bar = self.message_scroll.verticalScrollBar()
        QTimer.singleShot(0, lambda: bar.setValue(bar.maximum()))

    def shutdown(self) -> None:
        """Save a reply in progress as stopped, then end the engine."""
        if self._pending is not None:
            self._finish(self._pending.text, storage.STATUS_STOPPED, None, None)
        self.engine.shutdown()

