"""Hugging Face for the UI: search, a repo's files, a model's fit read from its header, the
token, interrupted downloads, and what a download reports (``app.hub``; the download itself is
``app.jobs.download_job``). Widgets call these through ``app.jobs.task.Task``: each one talks
to the network or the disk."""

from __future__ import annotations

from app.hub.download import Progress
from app.hub.errors import HubError
from app.hub.interrupted import Interrupted, discard, interrupted_downloads
from app.hub.remote_fit import RemoteFit, remote_fit
from app.hub.search import QuantFiles, RepoFiles, RepoSummary, is_split, repo_files, search_models
from app.hub.token import delete_token, get_token, set_token

__all__ = ["HubError", "Interrupted", "Progress", "QuantFiles", "RemoteFit", "RepoFiles",
           "RepoSummary", "delete_token", "discard", "get_token", "interrupted_downloads",
           "is_split", "remote_fit", "repo_files", "search_models", "set_token"]
