"""The banner that offers to continue a run that stopped before its end (the app was killed,
a step failed, the user cancelled): "Continue where you left off", or dismiss it."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from app.core.runs import DONE, RunRecord, RunStore
from app.core.storage import Storage
from app.pipeline.runner import interrupted


class ResumeBanner(QFrame):
    """Shown while an interrupted run exists; ``resume_requested`` carries its id."""

    resume_requested = Signal(int)

    def __init__(self, store: Storage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Banner")
        self.store = store
        self.run: RunRecord | None = None
        layout = QHBoxLayout(self)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.continue_button = QPushButton("Continue where you left off")
        self.continue_button.setObjectName("Primary")
        self.continue_button.clicked.connect(self._continue)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.dismiss)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.continue_button)
        layout.addWidget(self.dismiss_button)
        self.hide()

    def refresh(self) -> None:
        """Look for the latest interrupted run (at start-up)."""
        found = interrupted(self.store)
        self.run = found[0] if found else None
        if self.run is None:
            self.hide()
            return
        steps = RunStore(self.store).steps(self.run.id)
        done = sum(s.status == DONE for s in steps)
        how = {"cancelled": "was cancelled", "failed": "stopped with an error"}.get(
            self.run.status, "was interrupted")
        self.text.setText(f"“{self.run.title}” {how} after {done} of {len(steps)} steps. "
                          "Continuing does not redo the finished steps.")
        self.show()

    def _continue(self) -> None:
        if self.run is not None:
            self.hide()
            self.resume_requested.emit(self.run.id)

    def dismiss(self) -> None:
        """Stop offering this run (it stays in the history)."""
        if self.run is not None:
            RunStore(self.store).dismiss(self.run.id)
        self.refresh()
