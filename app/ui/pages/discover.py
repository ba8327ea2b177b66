"""Discover: search Hugging Face for GGUF models, pick a quantization, download it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import capacity, memory, paths
from app.core.hardware import HardwareProfile
from app.core.units import format_bytes
from app.jobs import hub as hub_search
from app.jobs.download_job import DownloadJob
from app.jobs.hub import HubError, Progress, delete_token, get_token, set_token
from app.jobs.task import Task
from app.ui.widgets import row_table


def size_fit(size: int, profile: HardwareProfile | None) -> str:
    """A fit badge from a file size alone (the header is not downloaded yet), with the same rule
    of thumb as the Hardware page's summary, against free GPU memory, then RAM."""
    if profile is None:
        return ""
    need = size * capacity.OVERHEAD_FACTOR + capacity.FIXED_OVERHEAD
    gpu_free = max((d.memory_free or 0 for d in profile.gpus), default=0)
    if gpu_free and need <= gpu_free * (1 - memory.GPU_MARGIN) - memory.GPU_RESERVE:
        return "Fits on GPU"
    if need <= profile.ram_available - memory.RAM_RESERVE:
        return "Fits in RAM"
    return "Too large"


class DiscoverView(QWidget):
    """Search box, results, a repo's quantizations, and the running download."""

    searched = Signal(list)
    files_listed = Signal(object)
    downloaded = Signal(list)  # list[Path]

    def __init__(self, endpoint: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.profile: HardwareProfile | None = None
        self.repo: hub_search.RepoFiles | None = None
        self.job: DownloadJob | None = None
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.query = QLineEdit()
        self.query.setPlaceholderText("Search Hugging Face for GGUF models (e.g. qwen2.5 7b)")
        self.query.returnPressed.connect(self.search)
        row.addWidget(self.query, 1)
        self.sort = QComboBox()
        for label, key in (("Most downloaded", "downloads"), ("Most liked", "likes"),
                           ("Recently updated", "last_modified")):
            self.sort.addItem(label, key)
        row.addWidget(self.sort)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        row.addWidget(self.search_button)
        self.token_button = QPushButton("Hugging Face token…")
        self.token_button.setToolTip("For gated and private repositories; kept in the OS keyring")
        self.token_button.clicked.connect(self._edit_token)
        row.addWidget(self.token_button)
        layout.addLayout(row)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setObjectName("Muted")
        layout.addWidget(self.status)
        body = QHBoxLayout()
        self.results = QListWidget()
        self.results.itemClicked.connect(self._repo_clicked)
        body.addWidget(self.results, 1)
        self.files = row_table(["Quantization", "Files", "Size", "Fit"])
        body.addWidget(self.files, 2)
        layout.addLayout(body, 1)
        bar = QHBoxLayout()
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download_selected)
        bar.addWidget(self.download_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        bar.addWidget(self.progress, 1)
        self.progress_text = QLabel()
        bar.addWidget(self.progress_text)
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self._pause_or_resume)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(lambda: self.job.cancel() if self.job else None)
        bar.addWidget(self.pause_button)
        bar.addWidget(self.cancel_button)
        layout.addLayout(bar)
        self._set_downloading(False)

    def set_hardware(self, profile: HardwareProfile) -> None:
        """For fit badges."""
        self.profile = profile

    def _edit_token(self) -> None:
        text, ok = QInputDialog.getText(
            self, "Hugging Face token", "Token (hf_…); leave empty to forget it:",
            QLineEdit.EchoMode.Password)
        if ok:
            self.save_token(text)

    def save_token(self, text: str) -> None:
        """Store (or, when empty, forget) the token and say what happened."""
        try:
            if text.strip():
                set_token(text)
                self.status.setText("Token saved in the OS keyring.")
            else:
                delete_token()
                self.status.setText("Token removed.")
        except HubError as exc:
            self.status.setText(str(exc))

    def search(self) -> None:
        """Search in the background."""
        text, sort = self.query.text().strip(), str(self.sort.currentData())
        self.status.setText("Searching…")
        task = Task(lambda: hub_search.search_models(text, sort=sort, endpoint=self.endpoint,
                                                 token=get_token()))
        task.finished.connect(self._show_results)
        task.failed.connect(self.status.setText)
        task.start()

    def _show_results(self, hits: list[hub_search.RepoSummary]) -> None:
        self.results.clear()
        for hit in hits:
            item = QListWidgetItem(f"{hit.repo_id}\n{hit.downloads:,} downloads · "
                                   f"{hit.likes:,} likes")
            item.setData(Qt.ItemDataRole.UserRole, hit.repo_id)
            self.results.addItem(item)
        self.status.setText(f"{len(hits)} repositories" if hits else "Nothing found.")
        self.searched.emit(hits)

    def _repo_clicked(self, item: QListWidgetItem) -> None:
        self.open_repo(str(item.data(Qt.ItemDataRole.UserRole)))

    def open_repo(self, repo_id: str) -> None:
        """List a repo's quantizations in the background."""
        self.status.setText(f"Reading {repo_id}…")
        task = Task(lambda: hub_search.repo_files(repo_id, endpoint=self.endpoint,
                                              token=get_token()))
        task.finished.connect(self._show_files)
        task.failed.connect(self.status.setText)
        task.start()

    def _show_files(self, repo: hub_search.RepoFiles) -> None:
        self.repo = repo
        self.files.setRowCount(len(repo.quants))
        for row, q in enumerate(repo.quants):
            parts = f"{len(q.files)} parts" if len(q.files) > 1 else q.files[0]
            for col, text in enumerate((q.quant, parts, format_bytes(q.size),
                                        size_fit(q.size, self.profile))):
                self.files.setItem(row, col, QTableWidgetItem(text))
        self.files.resizeColumnsToContents()
        if repo.quants:
            self.status.setText(f"{repo.repo_id}: {len(repo.quants)} quantizations")
        elif repo.has_safetensors:
            self.status.setText(f"{repo.repo_id} has no GGUF files, only the original weights: "
                                "convert and quantize them on the Quantize & Compare page.")
        else:
            self.status.setText(f"{repo.repo_id} has no model files QuantDesk can use.")
        self.files_listed.emit(repo)

    def download_selected(self) -> None:
        """Download the selected quantization (every part of it)."""
        rows = self.files.selectionModel().selectedRows()
        if self.repo is None or not rows or self.job is not None:
            return
        quant = self.repo.quants[rows[0].row()]
        self.job = DownloadJob(self.repo.repo_id, quant.files, paths.models_dir(),
                               endpoint=self.endpoint, token=get_token(), parent=self)
        self.job.progress.connect(self._progress)
        self.job.finished.connect(self._finished)
        self.job.failed.connect(self._failed)
        self.job.paused.connect(self._paused)
        self.job.cancelled.connect(self._cancelled)
        self._set_downloading(True)
        self.job.start()

    def _progress(self, p: Progress) -> None:
        self.progress.setValue(int(1000 * p.done / p.total) if p.total else 0)
        eta = f", {p.eta:.0f} s left" if p.eta is not None else ""
        self.progress_text.setText(f"{format_bytes(p.done)} of {format_bytes(p.total)}"
                                   f" · {format_bytes(int(p.speed))}/s{eta}")

    def _finished(self, files: list[Path]) -> None:
        self.job = None
        self._set_downloading(False)
        self.progress.setValue(1000)
        self.status.setText(f"Downloaded and verified: {', '.join(p.name for p in files)}")
        self.downloaded.emit(files)

    def _failed(self, message: str) -> None:
        self.job = None
        self._set_downloading(False)
        self.status.setText(message)

    def _paused(self, message: str) -> None:
        self.status.setText(message)
        self.pause_button.setText("Resume")

    def _cancelled(self) -> None:
        self.job = None
        self._set_downloading(False)
        self.progress.setValue(0)
        self.status.setText("Download cancelled; the partial file was deleted.")

    def _pause_or_resume(self) -> None:
        if self.job is None:
            return
        if self.pause_button.text() == "Resume":
            self.pause_button.setText("Pause")
            self.job.start()
        else:
            self.job.pause()

    def _set_downloading(self, on: bool) -> None:
        self.download_button.setEnabled(not on)
        self.pause_button.setEnabled(on)
        self.cancel_button.setEnabled(on)
        self.pause_button.setText("Pause")
