"""A/B chat: one prompt to two variants of a comparison, replies side by side, and a vote.

Both models are loaded together when their memory fits (``memory.plan_pair``); then they answer
at the same time, each on half the CPU threads. Otherwise one engine loads them one after the
other, the one already loaded answering first. Each side keeps its own conversation. Both get
the same sampling seed per prompt, so differences come from the weights, not the dice.

When both models are loaded together, a pause in typing the next prompt has each read it
ahead, as on the Chat page (``ChatSession.read_ahead``, the Settings' "Read my message while I
type"): the round then starts from the cache on both sides alike. One after the other, only the
model still loaded could read ahead and its first token would come sooner for that alone, so
neither does. The first round has no engine yet. Each side's metrics say how much of its
prompt came from the cache (one after the other, the model loaded again has none).

Blind by default: the columns are "A" and "B", assigned at random, and the names appear after
the vote (people favour the bigger file when they know which one it is). Votes go to the stored
comparison (``Storage.add_vote``), where the Compare tab and the exports show the tally.

Each side's reply life cycle is a ``ChatSession`` over an unsaved ``MemoryStore``: the same
state machine as the Chat page, so a side's reply is only over once its session has handled the
end. A round that fails is dropped from what that side's model remembers (the prompt stays on
screen).
"""

from __future__ import annotations

import html
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core import memory
from app.core.gguf_info import GGUFError, read_model_info
from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.core.storage import Storage
from app.jobs.engine_client import EngineClient
from app.pipeline.chat_session import (
    PARTIAL,
    ChatMessage,
    ChatSession,
    Crashed,
    EngineError,
    Loaded,
    LoadSettings,
    MemoryStore,
    Reply,
    ReplyEnded,
    ReplyText,
    Sampling,
    SessionError,
)
from app.ui.chat.chat_page import READ_AHEAD_PAUSE_MS, format_metrics
from app.ui.widgets import name_combo, text_label

N_CTX = 2048
TIE = "tie"


@dataclass
class _Side:
    name: str
    path: str
    client: EngineClient
    view: QTextBrowser
    header: QLabel
    metrics: QLabel
    session: ChatSession
    state: str = "idle"  # idle, loading, replying, done, failed
    prompt: str = ""  # this round's prompt, sent once the side's model is loaded
    user_message: int | None = None  # this round's prompt in the session, once sent
    reply: str = ""

    @property
    def history(self) -> list[ChatMessage]:
        """What this side's model remembers of the conversation."""
        return self.session.history()


class ABChat(QWidget):
    """Two variants answer the same prompts; the user votes for the better reply."""

    voted = Signal(dict)  # the comparison's tally after a vote

    def __init__(self, store: Storage, settings: Settings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.settings = settings if settings is not None else Settings()
        self.evaluation_id: int | None = None
        self.profile: HardwareProfile | None = None
        self.max_tokens = 512
        self.clients: list[EngineClient] = []
        self.sides: list[_Side] = []
        self.pair: memory.PairPlan | None = None
        self.queue: list[int] = []
        self.seed = 0
        self.revealed = True

        layout = QVBoxLayout(self)
        pick = QHBoxLayout()
        self.first = name_combo()
        self.second = name_combo()
        self.blind = QCheckBox("Blind (names shown after the vote)")
        self.blind.setChecked(True)
        for combo in (self.first, self.second):
            combo.currentIndexChanged.connect(self._choice_changed)
        self.blind.toggled.connect(self._choice_changed)
        pick.addWidget(self.first, 1)
        pick.addWidget(text_label("vs"))
        pick.addWidget(self.second, 1)
        pick.addWidget(self.blind)
        layout.addLayout(pick)
        self.mode = text_label("Pick two variants of the comparison and send a prompt.", "Muted")
        self.mode.setWordWrap(True)
        layout.addWidget(self.mode)

        grid = QGridLayout()
        self.headers = [text_label("A", "CardTitle"), text_label("B", "CardTitle")]
        self.views = [QTextBrowser(), QTextBrowser()]
        self.metric_labels = [text_label("", "Muted"), text_label("", "Muted")]
        for col in range(2):
            grid.addWidget(self.headers[col], 0, col)
            grid.addWidget(self.views[col], 1, col)
            grid.addWidget(self.metric_labels[col], 2, col)
        grid.setRowStretch(1, 1)
        layout.addLayout(grid, 1)

        votes = QHBoxLayout()
        self.vote_buttons = {"A": QPushButton("A is better"), TIE: QPushButton("Tie"),
                             "B": QPushButton("B is better")}
        self.vote_buttons["A"].clicked.connect(self._vote_a)
        self.vote_buttons[TIE].clicked.connect(self._vote_tie)
        self.vote_buttons["B"].clicked.connect(self._vote_b)
        for button in self.vote_buttons.values():
            button.setEnabled(False)
            votes.addWidget(button)
        self.tally = text_label("", "Muted")
        votes.addWidget(self.tally, 1)
        layout.addLayout(votes)

        ask = QHBoxLayout()
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("A prompt for both…")
        self.prompt.returnPressed.connect(self.send)
        self.prompt.textEdited.connect(self._typed)
        self._read_ahead_timer = QTimer(self)
        self._read_ahead_timer.setSingleShot(True)
        self._read_ahead_timer.setInterval(READ_AHEAD_PAUSE_MS)
        self._read_ahead_timer.timeout.connect(self._read_ahead)
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("Primary")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        ask.addWidget(self.prompt, 1)
        ask.addWidget(self.send_button)
        ask.addWidget(self.stop_button)
        layout.addLayout(ask)

    # ------------------------------------------------------------------ setup

    def set_hardware(self, profile: HardwareProfile) -> None:
        """The machine's profile: whether both variants fit in memory together."""
        self.profile = profile

    def set_variants(self, evaluation_id: int | None, variants: list[tuple[str, str]]) -> None:
        """The comparison shown: its id (votes go there) and its variants as (name, path)."""
        self.evaluation_id = evaluation_id
        for combo in (self.first, self.second):
            combo.blockSignals(True)
            combo.clear()
            for name, path in variants:
                combo.addItem(name, path)
            combo.blockSignals(False)
        if len(variants) >= 2:  # the two most different by default: reference and last one
            self.second.setCurrentIndex(len(variants) - 1)
        self.reset()
        self._show_tally()

    def _choice_changed(self, _value: object) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and the engines (the choice of variants changed)."""
        self.shutdown()
        self.sides, self.pair, self.queue = [], None, []
        for view, label in zip(self.views, self.metric_labels, strict=True):
            view.clear()
            label.setText("")
        self.headers[0].setText("A")
        self.headers[1].setText("B")
        self._enable_votes(False)
        self.send_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def shutdown(self) -> None:
        """End the engines (a reply in progress is dropped: A/B rounds are not saved)."""
        self._read_ahead_timer.stop()
        for side in self.sides:
            side.session.close()
        for client in self.clients:
            client.shutdown()
            client.deleteLater()
        self.clients = []

    def _prepare(self) -> bool:
        """Decide together or one after the other, start the engine(s), assign the sides."""
        chosen = [(c.currentText(), c.currentData()) for c in (self.first, self.second)]
        if any(path is None for _, path in chosen):
            self.mode.setText("This comparison has no variants to chat with.")
            return False
        if chosen[0][1] == chosen[1][1]:
            self.mode.setText("Pick two different variants.")
            return False
        try:
            infos = [read_model_info(Path(path)) for _, path in chosen]
        except GGUFError as exc:
            self.mode.setText(f"Cannot chat with this variant: {exc}")
            return False
        if self.profile is None:
            self.pair = None
            self.mode.setText("One after the other (this machine's memory is not known yet), "
                              "each with the whole machine.")
        else:
            self.pair = memory.plan_pair(infos[0], infos[1], self.profile, N_CTX)
            self.mode.setText(self.pair.explanation)
        if self.blind.isChecked():
            random.shuffle(chosen)
        self.revealed = not self.blind.isChecked()
        together = self.pair is not None and self.pair.together
        self.clients = [EngineClient(self) for _ in range(2 if together else 1)]
        for client in self.clients:
            client.loaded.connect(lambda loaded, c=client: self._loaded(c, loaded))
            client.load_failed.connect(lambda m, c=client: self._failed_on(c, m))
            # Request ids count per engine: each side's session takes only its own replies.
            client.engine_event.connect(lambda event, c=client: self._engine_event(c, event))
        self.sides = []
        for i, (name, path) in enumerate(chosen):
            client = self.clients[i if together else 0]
            self.sides.append(_Side(name, path, client, self.views[i], self.headers[i],
                                    self.metric_labels[i], ChatSession(client, MemoryStore())))
        self._label_sides()
        return True

    def _label_sides(self) -> None:
        for letter, side in zip("AB", self.sides, strict=True):
            side.header.setText(f"{letter}: {side.name}" if self.revealed else letter)

    # ------------------------------------------------------------------ a round

    @property
    def busy(self) -> bool:
        """A round is in progress (a side loading or replying, or waiting its turn)."""
        return any(s.state in ("loading", "replying") for s in self.sides) or bool(self.queue)

    def send(self) -> None:
        text = self.prompt.text().strip()
        if not text or self.busy:
            return
        if not self.sides and not self._prepare():
            return
        self._read_ahead_timer.stop()
        self.prompt.clear()
        self.seed = random.randrange(2**31)
        self._enable_votes(False)
        for side in self.sides:
            side.prompt, side.reply, side.user_message, side.state = text, "", None, "idle"
            side.metrics.setText("")
            side.view.append(f"<p><b>You:</b> {_escape(text)}</p>")
            side.view.append("")
        self.send_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        if len(self.clients) == 2:
            for i in range(2):
                self._run(i)
        else:  # one engine: the variant already loaded answers first
            loaded = self.clients[0].current
            first = 1 if loaded is not None and loaded.path == self.sides[1].path else 0
            self.queue = [first, 1 - first]
            self._run(self.queue.pop(0))

    @property
    def _reads_ahead(self) -> bool:
        """Both models are loaded together and idle, and reading ahead is on."""
        return self.settings.read_ahead and len(self.clients) == 2 and not self.busy

    def _typed(self) -> None:
        if self._reads_ahead:
            self._read_ahead_timer.start()

    def _read_ahead(self) -> None:
        """Have each side's model read the prompt typed so far (both loaded together)."""
        if not self._reads_ahead:
            return
        for side in self.sides:
            loaded = side.client.current
            if loaded is not None and loaded.path == side.path:
                side.session.read_ahead(self.prompt.text())

    def _settings(self, side: _Side) -> LoadSettings:
        threads = self.pair.threads_each if self.pair and self.pair.together else None
        layers, servers = 0, ()  # type: tuple[int, tuple[str, ...]]
        if self.pair is not None:
            plan = self.pair.first if side is self.sides[0] else self.pair.second
            layers, servers = plan.n_gpu_layers, plan.rpc_servers  # other machines' share
        return LoadSettings(side.path, n_ctx=N_CTX, n_threads=threads, n_gpu_layers=layers,
                            rpc_servers=servers)

    def _run(self, index: int) -> None:
        side = self.sides[index]
        loaded = side.client.current
        if loaded is None or loaded.path != side.path:
            side.state = "loading"
            side.metrics.setText("Loading…")
            try:
                side.client.load(self._settings(side))
            except EngineError as exc:
                self._fail(side, str(exc))
            return
        side.metrics.setText("Answering…")
        sampling = Sampling(seed=self.seed, max_tokens=self.max_tokens)
        try:
            started = side.session.send(side.prompt, sampling)
        except (SessionError, EngineError) as exc:
            self._fail(side, str(exc))
            return
        side.state = "replying"
        side.user_message = started.user.id if started.user else None

    def _side_for(self, client: EngineClient, state: str) -> _Side | None:
        return next((s for s in self.sides if s.client is client and s.state == state), None)

    def _loaded(self, client: EngineClient, loaded: Loaded) -> None:
        side = self._side_for(client, "loading")
        if side is not None and loaded.path == side.path:
            self._run(self.sides.index(side))

    def _engine_event(self, client: EngineClient, event: object) -> None:
        for side in self.sides:
            if side.client is not client:
                continue
            update = side.session.handle(event)
            if isinstance(update, ReplyText):
                side.reply += update.text
                cursor = side.view.textCursor()
                cursor.movePosition(QTextCursor.MoveOperation.End)
                cursor.insertText(update.text)
                side.view.setTextCursor(cursor)
            elif isinstance(update, ReplyEnded):
                self._ended(side, update.reply)
            elif isinstance(event, Crashed) and side.state == "loading":
                self._fail(side, f"The engine stopped: {event.message}")

    def _ended(self, side: _Side, reply: Reply) -> None:
        if reply.status == PARTIAL:  # the engine failed or died: the text stays on screen
            self._fail(side, reply.error or "The reply was cut short.")
            return
        side.state = "done"
        side.reply = reply.text
        note = {"length": " · cut at the token limit", "stopped": " · stopped"}.get(
            reply.finish_reason or "", "")
        m = reply.metrics
        # as under a Chat page reply: the prompt tokens cached too, when any
        side.metrics.setText(format_metrics(asdict(m), None) + note if m else f"stopped{note}")
        self._next()

    def _failed_on(self, client: EngineClient, message: str) -> None:
        side = self._side_for(client, "loading")
        if side is not None:
            self._fail(side, f"Could not load: {message}")

    def _fail(self, side: _Side, message: str) -> None:
        if side.user_message is not None and not side.session.busy:
            # The prompt stays on screen, not in what the model remembers.
            side.session.truncate(side.user_message)
            side.user_message = None
        side.state = "failed"
        side.metrics.setText(message)
        self._next()

    def _next(self) -> None:
        if self.queue:
            self._run(self.queue.pop(0))
            return
        if self.busy:
            return
        self.send_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        both = all(s.state == "done" for s in self.sides)
        self._enable_votes(both and self.evaluation_id is not None)
        if self.prompt.text().strip():  # the next prompt, typed while this round ran
            self._typed()

    def stop(self) -> None:
        """Stop both replies (what was written stays)."""
        self.queue = []
        for side in self.sides:
            side.session.stop()

    # ------------------------------------------------------------------ votes

    def _enable_votes(self, on: bool) -> None:
        for button in self.vote_buttons.values():
            button.setEnabled(on)

    def _vote_a(self) -> None:
        self.vote("A")

    def _vote_tie(self) -> None:
        self.vote(TIE)

    def _vote_b(self) -> None:
        self.vote("B")

    def vote(self, key: str) -> None:
        """Record the vote ('A', 'B' or 'tie') for the shown comparison; reveal the names."""
        if self.evaluation_id is None or len(self.sides) != 2:
            return
        name = TIE if key == TIE else self.sides[0 if key == "A" else 1].name
        tally = self.store.add_vote(self.evaluation_id, name)
        self._enable_votes(False)
        self.revealed = True
        self._label_sides()
        self._show_tally(tally)
        self.voted.emit(tally)

    def _show_tally(self, tally: dict[str, int] | None = None) -> None:
        if tally is None:
            tally = (self.store.evaluation(self.evaluation_id).votes
                     if self.evaluation_id is not None else {})
        self.tally.setText(tally_text(tally))


def tally_text(tally: dict[str, int]) -> str:
    """'Votes: Q4_K_M 3, Q8_0 1, tie 1' (most first), or '' when nobody voted."""
    if not tally:
        return ""
    ordered = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
    return "A/B votes: " + ", ".join(f"{name} {count}" for name, count in ordered)


def _escape(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")
