"""Step 1: what to quantize. The embedded model is the default, so the first click works with no
network; a library model, a GGUF file, a Hugging Face folder or a repo are the others. What was
found is shown in plain words, and an already quantized source is explained before going on."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QGridLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.core.embedded import DISPLAY_NAME
from app.core.library import Library
from app.core.settings import Settings
from app.jobs.task import Task
from app.pipeline import wizard
from app.pipeline.events import PipelineError
from app.pipeline.wizard import Source
from app.ui.widgets import Card, name_combo, set_role, text_label

EMBEDDED, LIBRARY, FILE, FOLDER, REPO = range(5)


class SourceStep(QWidget):
    """Choose a source; ``resolved`` carries the Source once it has been read (or None)."""

    resolved = Signal(object)

    def __init__(self, settings: Settings, has_embedded: bool,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.source: Source | None = None
        self._asked = ""
        layout = QVBoxLayout(self)
        card = Card("Which model do you want to quantize?")
        card.body.addWidget(text_label(
            "QuantDesk makes smaller versions of it (quantizations), measures how much each one "
            "loses against the original, and recommends the one to keep.", "Muted"))
        grid = QGridLayout()
        self.group = QButtonGroup(self)
        self.embedded = QRadioButton("The embedded model")
        self.embedded.setEnabled(has_embedded)
        embedded_note = text_label(f"{DISPLAY_NAME}, included with QuantDesk: works offline"
                                   if has_embedded else "not installed", "Muted")
        self.library_choice = QRadioButton("A model in your library")
        self.library = name_combo()
        self.file_choice = QRadioButton("A GGUF file")
        self.file = QLineEdit()
        self.file.setPlaceholderText("path/to/model-F16.gguf")
        file_button = QPushButton("Browse…")
        file_button.clicked.connect(self._pick_file)
        self.folder_choice = QRadioButton("A Hugging Face model folder")
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("a folder with config.json and *.safetensors")
        folder_button = QPushButton("Browse…")
        folder_button.clicked.connect(self._pick_folder)
        self.repo_choice = QRadioButton("A Hugging Face repo")
        self.repo = QLineEdit()
        self.repo.setPlaceholderText("org/name, e.g. HuggingFaceTB/SmolLM2-360M-Instruct")
        rows = ((self.embedded, embedded_note, None), (self.library_choice, self.library, None),
                (self.file_choice, self.file, file_button),
                (self.folder_choice, self.folder, folder_button),
                (self.repo_choice, self.repo, None))
        for i, (radio, field, button) in enumerate(rows):
            self.group.addButton(radio, i)
            grid.addWidget(radio, i, 0)
            if field is not None:
                grid.addWidget(field, i, 1)
            if button is not None:
                grid.addWidget(button, i, 2)
        grid.setColumnStretch(1, 1)
        card.body.addLayout(grid)
        layout.addWidget(card)

        self.found = Card("")
        self.found_text = text_label("", "Muted")
        self.notes = text_label("")
        self.found.body.addWidget(self.found_text)
        self.found.body.addWidget(self.notes)
        self.found.hide()
        layout.addWidget(self.found)
        layout.addStretch()

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(400)
        self._debounce.timeout.connect(self.look)
        self.group.idClicked.connect(lambda _id: self.look())
        self.library.currentIndexChanged.connect(lambda _i: self._choose(LIBRARY))
        for field, choice in ((self.file, FILE), (self.folder, FOLDER), (self.repo, REPO)):
            field.textEdited.connect(lambda _t, c=choice: self._choose(c, debounce=True))
        (self.embedded if has_embedded else self.file_choice).setChecked(True)
        self._fill_library()
        self.look()  # the default choice is read at once: the first Next works

    # --- choosing --------------------------------------------------------------------------

    def _fill_library(self) -> None:
        folders = list(self.settings.model_folders)
        task = Task(lambda: [(e.name, str(e.path)) for e in Library(folders).scan()
                             if e.info is not None])
        task.finished.connect(self._library_found)
        task.start()

    def _library_found(self, entries: list[tuple[str, str]]) -> None:
        self.library.blockSignals(True)
        self.library.clear()
        for name, path in entries:
            self.library.addItem(name, path)
        self.library.blockSignals(False)
        self.library_choice.setEnabled(bool(entries))
        if not entries:
            self.library.addItem("(no models yet)")
            self.library.setEnabled(False)

    def _choose(self, choice: int, debounce: bool = False) -> None:
        button = self.group.button(choice)
        if button.isEnabled():
            button.setChecked(True)
        if debounce:
            self._debounce.start()
        else:
            self.look()

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model to quantize", "", "GGUF (*.gguf)")
        if path:
            self.file.setText(path)
            self._choose(FILE)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Hugging Face model folder")
        if folder:
            self.folder.setText(folder)
            self._choose(FOLDER)

    def select_path(self, path: str) -> None:
        """Start from a given model file (the Models page's "Quantize…")."""
        self.file.setText(path)
        self._choose(FILE)

    def query(self) -> str:
        """What the chosen option points at, as ``wizard.resolve`` reads it."""
        choice = self.group.checkedId()
        if choice == EMBEDDED:
            return wizard.EMBEDDED
        if choice == LIBRARY:
            return str(self.library.currentData() or "")
        field = {FILE: self.file, FOLDER: self.folder, REPO: self.repo}.get(choice)
        return field.text().strip() if field is not None else ""

    # --- reading the source --------------------------------------------------------------

    def look(self) -> None:
        """Read the chosen source in the background and show what it is."""
        query = self.query()
        self._asked = query
        self.source = None
        self.resolved.emit(None)
        if not query:
            self.found.hide()
            return
        self.found.title.setText("Reading…")
        self.found_text.setText("")
        self.notes.setText("")
        self.found.show()
        def read() -> tuple[str, Source | str]:  # the reason when it cannot be used
            try:
                return query, wizard.resolve(query)
            except PipelineError as exc:
                return query, str(exc)

        # bound methods, not lambdas: if the page is gone when the answer comes, Qt drops them
        task = Task(read)
        task.finished.connect(self._answered)
        task.failed.connect(self._failed)
        task.start()

    def _answered(self, answer: tuple[str, Source | str]) -> None:
        query, found = answer
        if query != self._asked:
            return  # another choice was made meanwhile
        if isinstance(found, str):
            self._failed(found)
        else:
            self._resolved(found)

    def _resolved(self, source: Source) -> None:
        self.source = source
        self.found.title.setText(source.label)
        self.found_text.setText(source.summary() + (f"\n{source.location}"
                                                    if Path(source.location).exists() else ""))
        set_role(self.notes, "Warning" if source.quantized else "")
        self.notes.setText("\n\n".join(source.notes))
        self.resolved.emit(source)

    def _failed(self, message: str) -> None:
        self.found.title.setText("This cannot be used")
        self.found_text.setText("")
        set_role(self.notes, "Warning")
        self.notes.setText(message)
