"""Hugging Face for the UI: search, a repo's files, the token, and what a download reports
(``app.hub``; the download itself is ``app.jobs.download_job``). Widgets call these through
``app.jobs.task.Task``: each one talks to the network."""

from __future__ import annotations

from app.hub.download import Progress
from app.hub.errors import HubError
from app.hub.search import QuantFiles, RepoFiles, RepoSummary, is_split, repo_files, search_models
from app.hub.token import delete_token, get_token, set_token

__all__ = ["HubError", "Progress", "QuantFiles", "RepoFiles", "RepoSummary", "delete_token",
           "get_token", "is_split", "repo_files", "search_models", "set_token"]
