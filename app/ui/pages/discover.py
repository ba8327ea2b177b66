"""Discover: search Hugging Face for GGUF models, see what each quantization needs here, download.

Each quantization's fit comes from its header, read over HTTP Range requests in the background
(``app.jobs.hub.remote_fit``): the same estimate and plan as for a file on disk, at the context
picked here. Until a header is read, and where it cannot be, the size rule stands in, marked
with '~' and the reason.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import memory, paths
from app.core.hardware import HardwareProfile
from app.core.settings import Settings
from app.core.size_fit import size_fit
from app.core.units import format_bytes
from app.jobs import hub as hub_search
from app.jobs.download_job import DownloadJob
from app.jobs.hub import HubError, Progress, RemoteFit, delete_token, get_token, set_token
from app.jobs.task import Task
from app.ui.widgets import row_table, text_label

COLUMNS = ("Quantization", "Size", "Fit", "Needs", "GPU layers", "Longest context", "Files")
_FIT_COL = COLUMNS.index("Fit")
CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)
FIT_COLOURS = {"gpu": "#1b7f3b", "ram": "#1b5e9f", "partial": "#b35c00", "too_large": "#b00020"}

# What a row's background work hands back: (listing number, row, context, fit or None, why not).
_FitResult = tuple[int, int, int, RemoteFit | None, str | None]


def confirmation_text(quant: hub_search.QuantFiles, fit: RemoteFit | None) -> str:
    """The download confirmation: what is fetched and what it needs here."""
    what = quant.files[0] if len(quant.files) == 1 else f"{len(quant.files)} parts"
    text = f"Download {quant.quant} ({what}, {format_bytes(quant.size)})?\n\n"
    if fit is None:
        return text + "Its memory estimate is still being read."
    return text + f"It {fit.sentence()}."


class DiscoverView(QWidget):
    """Search box, results, a repo's quantizations with their fit, and the running download."""

    searched = Signal(list)
    files_listed = Signal(object)
    fits_ready = Signal()  # every row of the listing has its estimate (exact or not)
    downloaded = Signal(list)  # list[Path]
    download_stopped = Signal()  # failed or cancelled: what it left on disk may have changed

    def __init__(self, endpoint: str | None = None, settings: Settings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.settings = settings or Settings()
        self.profile: HardwareProfile | None = None
        self.repo: hub_search.RepoFiles | None = None
        self.fits: dict[int, RemoteFit] = {}
        self.problems: dict[int, str] = {}  # rows whose estimate failed outright
        self._listing = 0  # which listing the rows belong to: late answers for others are dropped
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
        self.status = QLabel("Search Hugging Face for a model by name (qwen2.5 7b, say), or "
                             "pick one on the Recommended tab. Its quantizations are then listed "
                             "with what each needs on this machine.")
        self.status.setWordWrap(True)
        self.status.setObjectName("Muted")
        layout.addWidget(self.status)

        body = QHBoxLayout()
        self.results = QListWidget()
        self.results.itemClicked.connect(self._repo_clicked)
        body.addWidget(self.results, 1)
        files = QVBoxLayout()
        context_row = QHBoxLayout()
        context_row.addWidget(QLabel("Estimate memory at context"))
        self.context = QComboBox()
        for n in CONTEXTS:
            self.context.addItem(memory.context_label(n), n)
        chosen = self.settings.discover_n_ctx
        self.context.setCurrentIndex(CONTEXTS.index(chosen) if chosen in CONTEXTS else 2)
        self.context.currentIndexChanged.connect(self._context_changed)
        context_row.addWidget(self.context)
        context_row.addStretch()
        files.addLayout(context_row)
        self.files = row_table(COLUMNS)
        self.files.setWordWrap(False)
        self.files.horizontalHeader().setStretchLastSection(True)
        self.files.itemSelectionChanged.connect(self._show_detail)
        files.addWidget(self.files, 1)
        body.addLayout(files, 4)
        self.detail = text_label("Pick a quantization to see what it needs on this machine.",
                                 "Muted")
        self.detail.setMinimumWidth(200)
        self.detail.setMaximumWidth(300)
        self.detail.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        body.addWidget(self.detail, 1)
        layout.addLayout(body, 1)

        bar = QHBoxLayout()
        self.download_button = QPushButton("Download")
        self.download_button.setEnabled(False)  # until a quantization is picked
        self.download_button.clicked.connect(self._download_clicked)
        bar.addWidget(self.download_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        bar.addWidget(self.progress, 1)
        self.progress_text = QLabel()
        bar.addWidget(self.progress_text)
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self._pause_or_resume)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._cancel)
        bar.addWidget(self.pause_button)
        bar.addWidget(self.cancel_button)
        layout.addLayout(bar)
        self._set_downloading(False)

    @property
    def n_ctx(self) -> int:
        """The context the estimates are made at."""
        return int(self.context.currentData())

    def set_hardware(self, profile: HardwareProfile) -> None:
        """The machine to estimate for: a listing already shown gets its estimates now."""
        self.profile = profile
        if self.repo is not None and not self.fits:
            self._estimate_all()

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

    # --- search and listing -------------------------------------------------------------------

    def search(self) -> None:
        """Search in the background."""
        text, sort, endpoint = self.query.text().strip(), str(self.sort.currentData()), \
            self.endpoint
        self.status.setText("Searching…")
        task = Task(lambda: hub_search.search_models(text, sort=sort, endpoint=endpoint,
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
        endpoint = self.endpoint
        task = Task(lambda: hub_search.repo_files(repo_id, endpoint=endpoint, token=get_token()))
        task.finished.connect(self._show_files)
        task.failed.connect(self.status.setText)
        task.start()

    def _show_files(self, repo: hub_search.RepoFiles) -> None:
        self.repo = repo
        self._listing += 1
        self.fits, self.problems = {}, {}
        self.files.setRowCount(len(repo.quants))
        for row, q in enumerate(repo.quants):
            parts = f"{len(q.files)} parts" if len(q.files) > 1 else q.files[0]
            for col, text in enumerate((q.quant, format_bytes(q.size), "", "", "", "", parts)):
                self.files.setItem(row, col, QTableWidgetItem(text))
            self._show_guess(row)
        self.files.resizeColumnsToContents()
        if repo.quants:
            self.status.setText(f"{repo.repo_id}: {len(repo.quants)} quantizations")
        elif repo.has_safetensors:
            self.status.setText(f"{repo.repo_id} has no GGUF files, only the original weights: "
                                "convert and quantize them on the Quantize & Compare page.")
        else:
            self.status.setText(f"{repo.repo_id} has no model files QuantDesk can use.")
        self._show_detail()
        self.files_listed.emit(repo)
        if self.profile is not None:
            self._estimate_all()

    # --- estimates ----------------------------------------------------------------------------

    def _show_guess(self, row: int) -> None:
        """The size rule's badge while the header is read."""
        if self.repo is None or self.profile is None:
            return
        guess = size_fit(self.repo.quants[row].size, self.profile)
        self._set_cells(row, (guess.badge, "reading header…", "", ""), guess.fit,
                        guess.sentence())

    def _estimate_all(self) -> None:
        if self.repo is None:
            return
        for row in range(len(self.repo.quants)):
            self._estimate(row)
        if not self.repo.quants:
            self.fits_ready.emit()

    def _estimate(self, row: int) -> None:
        """Read one row's header and plan it, in the background (or re-plan a header already
        read, at the current context: no network)."""
        if self.repo is None or self.profile is None:
            return
        repo_id, quant, profile = self.repo.repo_id, self.repo.quants[row], self.profile
        listing, n_ctx, endpoint, known = self._listing, self.n_ctx, self.endpoint, \
            self.fits.get(row)

        def work() -> _FitResult:
            try:
                if known is not None:
                    fit = known.replan(profile, n_ctx, up_to_trained=True)
                else:
                    fit = hub_search.remote_fit(repo_id, quant.files, profile, n_ctx=n_ctx,
                                                size=quant.size, endpoint=endpoint,
                                                token=get_token(), up_to_trained=True)
            except HubError as exc:
                return listing, row, n_ctx, None, str(exc)
            return listing, row, n_ctx, fit, None

        task = Task(work)
        task.finished.connect(self._fit_ready)
        task.failed.connect(self.status.setText)
        task.start()

    def _fit_ready(self, result: _FitResult) -> None:
        listing, row, n_ctx, fit, problem = result
        if listing != self._listing or n_ctx != self.n_ctx:
            return  # an older listing's or context's answer
        if fit is None:
            self.problems[row] = problem or "unknown"
            self._set_cells(row, ("?", "", "", ""), None, problem or "")
        else:
            self.fits[row] = fit
            self._show_fit(row, fit)
        self.files.resizeColumnsToContents()
        if self.repo is not None and \
                len(self.fits) + len(self.problems) == len(self.repo.quants):
            self.fits_ready.emit()
        self._show_detail()

    def _show_fit(self, row: int, fit: RemoteFit) -> None:
        tip = fit.sentence()
        if fit.plan is None:
            self._set_cells(row, (fit.badge, "size rule", "", ""), fit.fit, tip)
            return
        plan = fit.plan
        tip += "\n\n" + "\n".join(plan.explanation)
        self._set_cells(row, (plan.badge, format_bytes(plan.estimate.total),
                              f"{min(plan.n_gpu_layers, plan.estimate.n_layers + 1)}/"
                              f"{plan.estimate.n_layers + 1}",
                              memory.context_label(plan.max_ctx) if plan.max_ctx else "none"),
                        plan.fit, tip)

    def _set_cells(self, row: int, texts: tuple[str, str, str, str], fit: str | None,
                   tip: str) -> None:
        for offset, text in enumerate(texts):
            item = self.files.item(row, _FIT_COL + offset)
            if item is None:
                continue
            item.setText(text)
            item.setToolTip(tip)
            if offset == 0:
                item.setForeground(QColor(FIT_COLOURS.get(fit or "", "#666666")))

    def _context_changed(self) -> None:
        self.settings.discover_n_ctx = self.n_ctx
        if self.repo is None or self.profile is None:
            return
        self.problems = {}  # a failed row is tried again at the new context
        for row in range(len(self.repo.quants)):
            self._estimate(row)

    def selected_fit(self) -> RemoteFit | None:
        """The estimate of the selected quantization (None until it is read)."""
        rows = self.files.selectionModel().selectedRows()
        return self.fits.get(rows[0].row()) if rows else None

    def _update_download_button(self) -> None:
        """Download offers itself once there is a quantization to download and no download
        running."""
        chosen = self.repo is not None and bool(self.files.selectionModel().selectedRows())
        self.download_button.setEnabled(chosen and self.job is None)

    def _show_detail(self) -> None:
        self._update_download_button()
        rows = self.files.selectionModel().selectedRows()
        if self.repo is None or not rows:
            self.detail.setText("Pick a quantization to see what it needs on this machine.")
            return
        row = rows[0].row()
        quant = self.repo.quants[row]
        fit = self.fits.get(row)
        if fit is None:
            text = self.problems.get(row, "Reading its header…")
            self.detail.setText(f"{quant.quant}: {text}")
            return
        lines = [f"{quant.quant} {fit.sentence()}."]
        if fit.plan is not None and fit.header is not None:
            lines += ["", *fit.plan.explanation, "",
                      f"Estimated from its header: {format_bytes(fit.header.bytes_read)} of "
                      f"{format_bytes(fit.size)} read"
                      + (" (cached)" if fit.header.cached else
                         f" in {fit.header.requests} request(s)") + "."]
        self.detail.setText("\n".join(lines))

    # --- downloads ----------------------------------------------------------------------------

    def _download_clicked(self) -> None:
        self.download_selected()

    def download_selected(self, confirm: bool = True) -> None:
        """Download the selected quantization (every part of it), after a confirmation that
        says what it needs here."""
        rows = self.files.selectionModel().selectedRows()
        if self.repo is None or not rows or self.job is not None:
            return
        quant = self.repo.quants[rows[0].row()]
        if confirm:
            answer = QMessageBox.question(self, "Download",
                                          confirmation_text(quant, self.fits.get(rows[0].row())))
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.start_download(self.repo.repo_id, quant.files)

    def start_download(self, repo_id: str, files: tuple[str, ...]) -> bool:
        """Download ``files`` of ``repo_id`` (also: resume an interrupted download: what is
        finished is not fetched again). False when another download is running."""
        if self.job is not None:
            self.status.setText("Another download is running: let it finish, or cancel it "
                                "first.")
            return False
        self.job = DownloadJob(repo_id, files, paths.models_dir(), endpoint=self.endpoint,
                               token=get_token(), parent=self)
        self.job.progress.connect(self._progress)
        self.job.finished.connect(self._finished)
        self.job.failed.connect(self._failed)
        self.job.paused.connect(self._paused)
        self.job.cancelled.connect(self._cancelled)
        self._set_downloading(True)
        self.status.setText(f"Downloading {repo_id}/{files[0]}…")
        self.job.start()
        return True

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
        self.download_stopped.emit()

    def _paused(self, message: str) -> None:
        self.status.setText(message)
        self.pause_button.setText("Resume")

    def _cancelled(self) -> None:
        self.job = None
        self._set_downloading(False)
        self.progress.setValue(0)
        self.status.setText("Download cancelled; the partial file was deleted.")
        self.download_stopped.emit()

    def _cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _pause_or_resume(self) -> None:
        if self.job is None:
            return
        if self.pause_button.text() == "Resume":
            self.pause_button.setText("Pause")
            self.job.start()
        else:
            self.job.pause()

    def _set_downloading(self, on: bool) -> None:
        self._update_download_button()
        self.pause_button.setEnabled(on)
        self.cancel_button.setEnabled(on)
        self.pause_button.setText("Pause")
