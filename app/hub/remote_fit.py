"""Will this model on Hugging Face fit here, at this context, before downloading it?

The answer comes from the model's header (``app.hub.remote_header``) through the same memory
estimate and load plan as for a file on disk (``app.core.memory.plan``): the fit, the GPU
layers, the longest context that fits. Only when the header cannot be read does it fall back
to the file-size rule (``app.core.size_fit``), and then it says so and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core import memory
from app.core.hardware import HardwareProfile
from app.core.size_fit import SizeFit, size_fit
from app.hub.errors import HubError, RefusedName
from app.hub.remote_header import (
    FIRST_RANGE,
    HeaderUnavailable,
    RemoteHeader,
    read_remote_model,
)
from app.hub.search import split_names


@dataclass(frozen=True)
class RemoteFit:
    """What a model on the hub needs here: the exact plan from its header, or the size rule's
    guess with the reason (``problem``) the header could not be read."""

    repo_id: str
    files: tuple[str, ...]
    size: int
    header: RemoteHeader | None
    plan: memory.FitPlan | None
    by_size: SizeFit | None
    problem: str | None = None

    @property
    def fit(self) -> str:
        """'gpu', 'ram', 'partial' or 'too_large'."""
        if self.plan is not None:
            return self.plan.fit
        assert self.by_size is not None
        return self.by_size.fit

    @property
    def badge(self) -> str:
        """Short label for lists; a size-rule guess starts with '~'."""
        if self.plan is not None:
            return self.plan.badge
        assert self.by_size is not None
        return self.by_size.badge

    def sentence(self) -> str:
        """'needs 6.1 GiB at 8K context: fits on your GPU', or the size rule's guess and why
        the header could not be read."""
        if self.plan is not None:
            return self.plan.sentence()
        assert self.by_size is not None
        return f"{self.by_size.sentence()} (the exact estimate needs its header: {self.problem})"

    def replan(self, profile: HardwareProfile, n_ctx: int | None = None,
               n_gpu_layers: int | None = None, kv_type: str = "f16",
               up_to_trained: bool = False) -> RemoteFit:
        """The same model planned at another context (no network: the header is kept);
        ``up_to_trained``: no longer than the context the model was trained for."""
        if self.header is None:
            return dataclasses.replace(self, by_size=size_fit(self.size, profile))
        return dataclasses.replace(self, plan=_plan(self.header, profile, n_ctx, n_gpu_layers,
                                                    kv_type, up_to_trained))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: the plan (or the guess and its reason) and what the header cost."""
        data: dict[str, Any] = {"repo_id": self.repo_id, "files": list(self.files),
                                "size": self.size, "fit": self.fit, "badge": self.badge,
                                "sentence": self.sentence(), "exact": self.plan is not None,
                                "problem": self.problem}
        if self.plan is not None:
            data["plan"] = self.plan.to_json()
        if self.header is not None:
            data["header"] = {"bytes_read": self.header.bytes_read,
                              "requests": self.header.requests,
                              "seconds": round(self.header.seconds, 3),
                              "cached": self.header.cached, "commit": self.header.commit,
                              "model": self.header.info.to_json()}
        return data


def remote_fit(repo_id: str, files: Sequence[str], profile: HardwareProfile, *,
               n_ctx: int | None = None, n_gpu_layers: int | None = None,
               kv_type: str = "f16", size: int | None = None, revision: str = "main",
               endpoint: str | None = None, token: str | None = None,
               first_range: int | None = None, up_to_trained: bool = False) -> RemoteFit:
    """Plan ``files`` of ``repo_id`` (one model: a file, or all parts of a split one) on this
    machine from their headers.

    When the header cannot be read, the size rule answers and ``problem`` says why. ``size``
    (the listing's, when the caller has it) also lets any other hub failure for this file fall
    back; without it those raise as the download would (HubError). A name that could not be
    saved is always refused (RefusedName). ``up_to_trained``: plan at most the context the
    model was trained for (the list of a repo's files at one chosen context).
    """
    try:
        header = read_remote_model(repo_id, files, revision=revision, endpoint=endpoint,
                                   token=token, first_range=first_range or FIRST_RANGE)
    except RefusedName:
        raise
    except HeaderUnavailable as exc:
        known = exc.size if exc.size is not None else size
        if known is None:
            raise
        return RemoteFit(repo_id, tuple(files), known, None, None, size_fit(known, profile),
                         str(exc))
    except HubError as exc:
        if size is None:
            raise
        return RemoteFit(repo_id, tuple(files), size, None, None, size_fit(size, profile),
                         str(exc))
    plan = _plan(header, profile, n_ctx, n_gpu_layers, kv_type, up_to_trained)
    return RemoteFit(repo_id, tuple(files), header.size, header, plan, None)


def _plan(header: RemoteHeader, profile: HardwareProfile, n_ctx: int | None,
          n_gpu_layers: int | None, kv_type: str, up_to_trained: bool) -> memory.FitPlan:
    trained = header.info.n_ctx_train
    if up_to_trained and n_ctx is not None and trained:
        n_ctx = min(n_ctx, trained)
    return memory.plan(header.info, profile, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                       kv_type=kv_type)


def hf_reference(text: str) -> tuple[str, tuple[str, ...]]:
    """'hf:ORG/REPO/FILE.gguf' → ('ORG/REPO', the model's files): a part of a split model
    names every part. Raises HubError for anything else (the names are checked for safety
    later, where they could become paths)."""
    rest = text[3:] if text.startswith("hf:") else text
    pieces = rest.split("/")
    if len(pieces) < 3 or not all(pieces) or not pieces[-1].lower().endswith(".gguf"):
        raise HubError(f"{text!r} does not name a GGUF file on Hugging Face: write "
                       "hf:ORG/REPO/FILE.gguf (for a split model, any of its parts).")
    return "/".join(pieces[:2]), split_names("/".join(pieces[2:]))
