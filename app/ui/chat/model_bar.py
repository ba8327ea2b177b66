"""The model picker above the chat, with load settings and load progress."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.core import memory
from app.core.gguf_info import ModelInfo
from app.core.units import format_bytes
from app.ui.widgets import name_combo

_OPEN = "__open__"


KV_TYPES = ("f16", "q8_0", "q4_0")
FLASH_ATTENTION = ("auto", "on", "off")


@dataclass(frozen=True)
class LoadChoice:
    """What the user chose for loading: context length, GPU layers ('auto' or a number),
    threads (None: llama.cpp's default), flash attention ('auto', 'on', 'off') and the KV
    cache's type ('f16', 'q8_0', 'q4_0')."""

    n_ctx: int
    gpu_layers: str
    threads: int | None
    flash_attn: str = "auto"
    kv_type: str = "f16"


class LoadSettingsDialog(QDialog):
    """Context length, GPU layers (with "auto"), threads, flash attention, KV cache type;
    with a model at hand, what each KV cache type takes at the chosen context."""

    def __init__(self, choice: LoadChoice, parent: QWidget | None = None,
                 model: ModelInfo | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Load settings")
        self.model = model
        form = QFormLayout(self)
        self.n_ctx = QSpinBox()
        self.n_ctx.setRange(256, 1_048_576)
        self.n_ctx.setSingleStep(1024)
        self.n_ctx.setValue(choice.n_ctx)
        form.addRow("Context length", self.n_ctx)
        self.gpu_layers = QSpinBox()
        self.gpu_layers.setRange(-2, 999)
        self.gpu_layers.setSpecialValueText("auto")  # shown for the minimum, -2
        self.gpu_layers.setToolTip("auto: as many layers as fit the GPU; -1: all; 0: CPU only")
        self.gpu_layers.setValue(-2 if choice.gpu_layers == "auto" else int(choice.gpu_layers))
        form.addRow("GPU layers", self.gpu_layers)
        self.threads = QSpinBox()
        self.threads.setRange(0, 512)
        self.threads.setSpecialValueText("auto")
        self.threads.setValue(choice.threads or 0)
        form.addRow("Threads", self.threads)
        self.flash_attn = QComboBox()
        self.flash_attn.addItems(FLASH_ATTENTION)
        self.flash_attn.setCurrentText(choice.flash_attn)
        self.flash_attn.setToolTip("auto: on where layers are offloaded (a GPU, another "
                                   "machine) or the KV cache is quantized, which needs it; off "
                                   "on the CPU alone, where llama.cpp's flash attention is "
                                   "twice as slow deep in a conversation. On saves the "
                                   "attention scores' memory at long contexts.")
        form.addRow("Flash attention", self.flash_attn)
        self.kv_type = QComboBox()
        self.kv_type.addItems(KV_TYPES)
        self.kv_type.setCurrentText(choice.kv_type)
        form.addRow("KV cache", self.kv_type)
        self.kv_note = QLabel()
        self.kv_note.setWordWrap(True)
        self.kv_note.setObjectName("Muted")
        form.addRow(self.kv_note)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        for widget in (self.kv_type, self.flash_attn):
            widget.currentTextChanged.connect(self._update_note)
        self.n_ctx.valueChanged.connect(self._update_note)
        self._update_note()

    def _update_note(self) -> None:
        """What each KV cache type takes for this model at this context, and whether the
        choice can load (llama.cpp quantizes the V cache only with flash attention)."""
        parts = []
        if self.model is not None:
            sizes = {t: memory.kv_cache_bytes(self.model, self.n_ctx.value(),
                                              range(self.model.n_layers), t) for t in KV_TYPES}
            parts.append("KV cache at this context: " + ", ".join(
                f"{t} {format_bytes(size)}" for t, size in sizes.items()) + ".")
        conflict = self.kv_type.currentText() != "f16" and self.flash_attn.currentText() == "off"
        if conflict:
            parts.append("A quantized KV cache needs flash attention: choose auto or on.")
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        if ok is not None:
            ok.setEnabled(not conflict)
        self.kv_note.setText(" ".join(parts) or "q8_0 halves the KV cache at a very small "
                             "quality cost; q4_0 quarters it and costs more.")

    def choice(self) -> LoadChoice:
        """The settings as edited."""
        layers = self.gpu_layers.value()
        return LoadChoice(self.n_ctx.value(), "auto" if layers == -2 else str(layers),
                          self.threads.value() or None, self.flash_attn.currentText(),
                          self.kv_type.currentText())


class ModelBar(QWidget):
    """Pick a model (known ones, or any GGUF file) and see it load."""

    model_chosen = Signal(str)
    settings_changed = Signal(object)  # LoadChoice

    def __init__(self, choice: LoadChoice, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.choice = choice
        self.model_info: ModelInfo | None = None  # the model being loaded, for the dialog
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addWidget(QLabel("Model"))
        self.picker = name_combo(30)
        self.picker.setMinimumWidth(320)
        self.picker.addItem("Open a GGUF file…", _OPEN)
        self.picker.activated.connect(self._activated)
        layout.addWidget(self.picker, 1)
        self.settings_button = QPushButton("Load settings…")
        self.settings_button.clicked.connect(self._edit_settings)
        layout.addWidget(self.settings_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setFixedWidth(120)
        self.progress.hide()
        layout.addWidget(self.progress)
        self.status = QLabel("No model loaded")
        self.status.setObjectName("Muted")
        self.status.setWordWrap(True)  # a long file name wraps instead of widening the window
        layout.addWidget(self.status, 1)

    def add_model(self, path: Path, label: str | None = None) -> None:
        """List a model (once) above the 'Open…' entry."""
        if self.picker.findData(str(path)) >= 0:
            return
        self.picker.insertItem(self.picker.count() - 1, label or path.name, str(path))

    def select(self, path: Path) -> None:
        """Show ``path`` as the chosen model (adding it if needed)."""
        self.add_model(path)
        self.picker.setCurrentIndex(self.picker.findData(str(path)))

    def current_path(self) -> str | None:
        """The chosen model's path."""
        data = self.picker.currentData()
        return None if data in (None, _OPEN) else str(data)

    def _activated(self, index: int) -> None:
        data = self.picker.itemData(index)
        if data == _OPEN:
            path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "",
                                                  "GGUF models (*.gguf)")
            if not path:
                return
            self.select(Path(path))
            data = path
        self.model_chosen.emit(str(data))

    def _edit_settings(self) -> None:
        dialog = LoadSettingsDialog(self.choice, self, self.model_info)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.choice = dialog.choice()
            self.settings_changed.emit(self.choice)

    def show_progress(self, fraction: float) -> None:
        """Loading: show the bar."""
        self.progress.show()
        self.progress.setValue(int(fraction * 100))
        self.status.setText("Loading…")

    def show_status(self, text: str) -> None:
        """Idle: hide the bar, show a line of status."""
        self.progress.hide()
        self.status.setText(text)
