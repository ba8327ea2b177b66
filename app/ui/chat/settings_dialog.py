"""Per-conversation settings: system prompt and sampling; and whether the chat reads the message
being typed (for every conversation)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

from app.core.sampling import Sampling


class ConversationSettingsDialog(QDialog):
    """Edit the system prompt and sampling of one conversation."""

    def __init__(self, system_prompt: str, sampling: Sampling, read_ahead: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Conversation settings")
        form = QFormLayout(self)
        self.system_prompt = QPlainTextEdit(system_prompt)
        self.system_prompt.setPlaceholderText("Optional instructions for the model")
        form.addRow("System prompt", self.system_prompt)

        def spin(value: float, low: float, high: float, step: float) -> QDoubleSpinBox:
            box = QDoubleSpinBox()
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setDecimals(2)
            box.setValue(value)
            return box

        self.temperature = spin(sampling.temperature, 0.0, 2.0, 0.05)
        self.top_p = spin(sampling.top_p, 0.0, 1.0, 0.01)
        self.min_p = spin(sampling.min_p, 0.0, 1.0, 0.01)
        self.repeat_penalty = spin(sampling.repeat_penalty, 0.5, 2.0, 0.01)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setValue(sampling.top_k)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 131072)
        self.max_tokens.setValue(sampling.max_tokens)
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("random")
        self.seed.setValue(-1 if sampling.seed is None else sampling.seed)
        for label, widget in (("Temperature", self.temperature), ("Top P", self.top_p),
                              ("Top K", self.top_k), ("Min P", self.min_p),
                              ("Repeat penalty", self.repeat_penalty),
                              ("Max tokens", self.max_tokens), ("Seed", self.seed)):
            form.addRow(label, widget)
        self.read_ahead = QCheckBox("Read my message while I type (all conversations)")
        self.read_ahead.setToolTip(
            "When you pause typing, the model reads the conversation and your message so far, "
            "so its reply starts sooner: a pasted document is read while you type the "
            "question. It uses the processor while you type.")
        self.read_ahead.setChecked(read_ahead)
        form.addRow(self.read_ahead)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def sampling(self) -> Sampling:
        """The sampling settings as edited."""
        return Sampling(
            temperature=self.temperature.value(), top_p=self.top_p.value(),
            top_k=self.top_k.value(), min_p=self.min_p.value(),
            repeat_penalty=self.repeat_penalty.value(), max_tokens=self.max_tokens.value(),
            seed=None if self.seed.value() < 0 else self.seed.value())
