"""A Hugging Face download (all parts of a model) on a worker thread, with Qt signals."""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.hub.download import Progress, download_files, remote_file
from app.hub.errors import Cancelled, HubError, Paused


class DownloadJob(QObject):
    """Downloads ``files`` of ``repo_id`` one after the other into ``dest``.

    Resuming (after a pause, or a new job after the app was closed) fetches only what is
    missing: ``download_files`` checks finished parts instead of fetching them again.
    """

    progress = Signal(object)  # Progress, with done/total over all parts
    finished = Signal(list)  # list[Path]
    failed = Signal(str)
    paused = Signal(str)
    cancelled = Signal()

    def __init__(self, repo_id: str, files: tuple[str, ...], dest: Path, *,
                 endpoint: str | None = None, token: str | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.repo_id, self.files, self.dest = repo_id, files, dest
        self.endpoint, self.token = endpoint, token
        self._cancel = threading.Event()
        self._pause = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (or resume after a pause)."""
        self._cancel.clear()
        self._pause.clear()
        self._thread = threading.Thread(target=self._run, name="download", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop and delete the partial file."""
        self._cancel.set()

    def pause(self) -> None:
        """Stop and keep the partial file; start() resumes."""
        self._pause.set()

    def wait(self, timeout: float = 10.0) -> None:
        """Join the worker thread (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            remotes = [remote_file(self.repo_id, f, endpoint=self.endpoint, token=self.token)
                       for f in self.files]
            paths: list[Path] = []
            for event in download_files(remotes, self.dest, token=self.token,
                                        cancel=self._cancel, pause=self._pause):
                if isinstance(event, Progress):
                    self.progress.emit(event)
                else:
                    paths.append(event.path)
            self.finished.emit(paths)
        except Cancelled:
            self.cancelled.emit()
        except Paused as exc:
            self.paused.emit(str(exc))
        except HubError as exc:
            self.failed.emit(str(exc))
        except OSError as exc:
            self.failed.emit(f"The download could not be written: {exc}")
