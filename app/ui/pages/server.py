"""Server page: serve the model on a local OpenAI-compatible API, and watch its requests.

The server (``app.server``) runs on the chat's engine (``EngineClient.shared``): one loaded
model, requests and the window's chat taking turns. Start loads the chosen model first when it
is not the one loaded. The page shows the address (with a copy button), examples to paste, and
a live log of requests, refreshed from the server's ``RequestLog``.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.addresses import is_loopback
from app.core.settings import Settings
from app.jobs.engine_client import EngineClient
from app.pipeline.chat_session import Loaded, LoadSettings
from app.server.config import DEFAULT_HOST, MAX_PARALLEL, ServerConfig, ServerConfigError
from app.server.request_log import LogEntry
from app.server.runner import ServerRunner
from app.ui.widgets import Card, name_combo, page_title, row_table, set_role, text_label

LOG_COLUMNS = ("Time", "Client", "Endpoint", "Prompt", "Completion", "TTFT", "tok/s", "Status")
MAX_ROWS = 500


def examples(base_url: str, model_id: str, api_key: str | None) -> str:
    """curl and Python ``openai`` examples for this server."""
    key = api_key or "not-needed"
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    return (
        f"curl {base_url}/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
        f"  -d '{{\"model\": \"{model_id}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n\n"
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{base_url}\", api_key=\"{key}\")\n"
        f"reply = client.chat.completions.create(model=\"{model_id}\",\n"
        "    messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])\n"
        "print(reply.choices[0].message.content)\n")


def _row(entry: LogEntry) -> tuple[str, ...]:
    def secs(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else ""

    return (time.strftime("%H:%M:%S", time.localtime(entry.started)), entry.client,
            entry.endpoint + (" (stream)" if entry.stream else ""),
            str(entry.prompt_tokens or ""), str(entry.completion_tokens or ""), secs(entry.ttft),
            f"{entry.tokens_per_second:.1f}" if entry.tokens_per_second else "",
            str(entry.status) if entry.status else "running")


class ServerPage(QWidget):
    """Start/stop, the model served, the address, examples, the request log."""

    running_changed = Signal(bool)  # for the sidebar's indicator

    def __init__(self, engine: EngineClient, settings: Settings, embedded_model: Path | None,
                 embedded_name: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.settings = settings
        self.runner: ServerRunner | None = None
        self._pending: ServerConfig | None = None  # waiting for its model to load
        self._changes = -1

        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.setSpacing(12)
        layout.addWidget(page_title("Server"))
        layout.addWidget(text_label(
            "An OpenAI-compatible API on this machine: editors, Open WebUI and scripts written "
            "for the OpenAI client use the model you choose here. It shares the Chat page's "
            "engine: one copy of the model; requests and chat take turns, or run together "
            "when it generates several replies at once.", "Muted"))

        card = Card("Serve")
        row = QHBoxLayout()
        self.model = name_combo()
        if embedded_model is not None:
            self.model.addItem(embedded_name or embedded_model.stem, str(embedded_model))
        if settings.default_model and settings.default_model != str(embedded_model):
            self.add_model(Path(settings.default_model))
        # Until a model is chosen here (or was served last), the page offers the model the
        # engine has loaded: the chat's, or the one the wizard just opened in chat. Serving it
        # needs no reload, and serving another would switch the chat's model too.
        self._chosen = False
        if settings.server_model and Path(settings.server_model).is_file():
            self._select(Path(settings.server_model))  # the model served last
            self._chosen = True
        self.model.activated.connect(self._model_chosen)
        row.addWidget(text_label("Model", selectable=False))
        row.addWidget(self.model, 1)
        self.host = QComboBox()
        self.host.setEditable(True)
        self.host.addItems([DEFAULT_HOST, "0.0.0.0"])
        self.host.setCurrentText(settings.server_host)
        self.host.currentTextChanged.connect(self._host_changed)
        row.addWidget(text_label("Address", selectable=False))
        row.addWidget(self.host)
        self.port = QSpinBox()
        self.port.setRange(0, 65535)
        self.port.setValue(settings.server_port)
        row.addWidget(self.port)
        self.parallel = QSpinBox()
        self.parallel.setRange(1, MAX_PARALLEL)
        self.parallel.setValue(settings.server_parallel)
        self.parallel.setSuffix(" at once")
        self.parallel.setToolTip(
            "Replies generated at the same time (llama.cpp parallel sequences). Several "
            "clients then share each step of the model instead of waiting in turn; each reply "
            "keeps its own context, so the KV cache takes this many times the memory.")
        row.addWidget(text_label("Replies", selectable=False))
        row.addWidget(self.parallel)
        card.body.addLayout(row)
        keys = QHBoxLayout()
        self.api_key = QLineEdit()
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setPlaceholderText("API key (required for a network address)")
        keys.addWidget(self.api_key, 1)
        self.show_key = QCheckBox("Show")
        self.show_key.toggled.connect(lambda on: self.api_key.setEchoMode(
            QLineEdit.EchoMode.Normal if on else QLineEdit.EchoMode.Password))
        keys.addWidget(self.show_key)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.toggle)
        keys.addWidget(self.start_button)
        card.body.addLayout(keys)
        self.network_warning = text_label(
            "This address makes the model reachable from other machines on your network. "
            "Every request must carry the API key.", "Warning")
        card.body.addWidget(self.network_warning)
        self._host_changed(self.host.currentText())
        self.status = text_label("Stopped.", "Muted")
        card.body.addWidget(self.status)
        address = QHBoxLayout()
        self.address = QLineEdit()
        self.address.setReadOnly(True)
        address.addWidget(self.address, 1)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self._copy)
        address.addWidget(self.copy_button)
        card.body.addLayout(address)
        self.examples = QPlainTextEdit()
        self.examples.setReadOnly(True)
        self.examples.setMaximumHeight(150)
        card.body.addWidget(self.examples)
        layout.addWidget(card)

        log_card = Card("Requests")
        self.table = row_table(LOG_COLUMNS)
        log_card.body.addWidget(self.table)
        layout.addWidget(log_card, 1)

        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self.refresh_log)
        engine.loaded.connect(self._model_loaded)
        engine.load_failed.connect(self._load_failed)
        # the address and examples follow what Start would serve
        self.model.currentIndexChanged.connect(self._show_address)
        self.host.currentTextChanged.connect(self._show_address)
        self.port.valueChanged.connect(self._show_address)
        self.api_key.textChanged.connect(self._show_address)
        self._show_address()

    # --- intent -------------------------------------------------------------------------------

    def add_model(self, path: Path) -> None:
        """Offer ``path`` (a library model) in the list."""
        if self.model.findData(str(path)) < 0:
            self.model.addItem(path.stem, str(path))

    def _select(self, path: Path) -> None:
        """Offer ``path`` and choose it (found by the same text it is offered under)."""
        self.add_model(path)
        self.model.setCurrentIndex(self.model.findData(str(path)))

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def toggle(self) -> None:
        if self.running or self._pending is not None:
            self.stop()
        else:
            self.start()

    def config(self) -> ServerConfig:
        key = self.api_key.text().strip() or None
        return ServerConfig(host=self.host.currentText().strip() or DEFAULT_HOST,
                            port=self.port.value(), api_key=key)

    def start(self) -> None:
        """Validate, load the chosen model if another is loaded, then serve."""
        config = self.config()
        try:
            config.validate()
        except ServerConfigError as exc:
            self._show_status(str(exc), "Warning")
            return
        path = self.model.currentData()
        if not path:
            self._show_status("Choose a model to serve.", "Warning")
            return
        current = self.engine.current
        if (current is not None and Path(current.path) == Path(path)
                and current.n_parallel == self.parallel.value()):
            self._serve(config)
            return
        self._pending = config
        self.start_button.setText("Cancel")
        self._show_status(f"Loading {Path(path).name}…", "Muted")
        try:
            self.engine.load(LoadSettings(str(path), n_ctx=self.settings.n_ctx,
                                          n_threads=self.settings.threads,
                                          flash_attn=self.settings.flash_attn,
                                          n_parallel=self.parallel.value()))
        except Exception as exc:  # EngineBusy: the chat is replying
            self._pending = None
            self.start_button.setText("Start")
            self._show_status(str(exc), "Warning")

    def _serve(self, config: ServerConfig) -> None:
        self._pending = None
        self.runner = ServerRunner(self.engine.shared, config)
        try:
            self.runner.start()
        except (OSError, ServerConfigError) as exc:
            self.runner = None
            self.start_button.setText("Start")
            self._show_status(str(exc), "Warning")
            return
        self.start_button.setText("Stop")
        self._show_serving()
        self._show_address()
        self._timer.start()
        self._remember(config)
        self.running_changed.emit(True)

    def _remember(self, config: ServerConfig) -> None:
        """What was served, for the next run of the app (the window saves the settings)."""
        settings = self.settings
        settings.server_model = self.model.currentData()
        settings.server_host, settings.server_port = config.host, config.port
        settings.server_parallel = self.parallel.value()

    def stop(self) -> None:
        """Stop serving (open streams end; their replies are stopped)."""
        self._pending = None
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
            self.running_changed.emit(False)
        self._timer.stop()
        self.refresh_log()
        self.start_button.setText("Start")
        self._show_status("Stopped.", "Muted")
        self._show_address()

    def shutdown(self) -> None:
        """The window closes."""
        self.stop()

    # --- state --------------------------------------------------------------------------------

    def _model_chosen(self, _index: int) -> None:
        self._chosen = True

    def _model_loaded(self, loaded: Loaded) -> None:
        pending = self._pending
        if pending is not None and Path(loaded.path) == Path(self.model.currentData() or ""):
            self._serve(pending)
        elif self.runner is not None:  # the chat loaded another model: the server now serves it
            self._show_serving()
            self._show_address()
        elif pending is None and not self._chosen:
            self._select(Path(loaded.path))

    def _show_serving(self) -> None:
        """Which model answers, and where: one engine serves the chat and the clients, so a
        model loaded on the Chat page is the one the server answers with from then on."""
        if self.runner is None:
            return
        current = self.engine.current
        chosen = Path(self.model.currentData() or "")
        if current is None or Path(current.path) == chosen:
            name = chosen.name or "the chosen model"
            at_once = (f", {current.n_parallel} replies at once"
                       if current is not None and current.n_parallel > 1 else "")
            self._show_status(f"Serving {name} at {self.runner.base_url}{at_once}", "")
            return
        self._show_status(f"Serving {Path(current.path).name} at {self.runner.base_url}: the "
                          "Chat page loaded it, and the server shares the chat's engine. Stop "
                          "and Start to serve the model chosen here again.", "Warning")

    def _load_failed(self, message: str) -> None:
        if self._pending is not None:
            self._pending = None
            self.start_button.setText("Start")
            self._show_status(f"The model could not be loaded: {message}", "Warning")

    def _host_changed(self, host: str) -> None:
        self.network_warning.setVisible(not is_loopback(host.strip() or DEFAULT_HOST))

    def _show_status(self, text: str, role: str) -> None:
        self.status.setText(text)
        set_role(self.status, role)

    def _show_address(self, *_: object) -> None:
        config = self.runner.config if self.runner else self.config()
        url = self.runner.base_url if self.runner else config.base_url()
        # the id the server answers with: the loaded model's while serving (the chat may have
        # loaded another), else the one chosen here
        current = self.engine.current if self.runner else None
        path = current.path if current is not None else self.model.currentData()
        model_id = Path(path).stem if path else "model"
        self.address.setText(url)
        self.examples.setPlainText(examples(url, model_id, config.api_key))

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.address.text())

    def refresh_log(self) -> None:
        """Show the log's entries, newest first (when it changed)."""
        runner = self.runner
        if runner is None or runner.log.changes == self._changes:
            return
        self._changes = runner.log.changes
        entries = runner.log.entries()[-MAX_ROWS:][::-1]
        self.table.setRowCount(len(entries))
        for r, entry in enumerate(entries):
            for c, value in enumerate(_row(entry)):
                self.table.setItem(r, c, QTableWidgetItem(value))
