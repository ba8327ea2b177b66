"""The texts a run reads: the bundled calibration and evaluation texts, or a file of the user's."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core import resources
from app.pipeline.events import PipelineError

_BUNDLED = {"calibration": resources.calibration_text, "evaluation": resources.evaluation_text}


@dataclass(frozen=True)
class TextSource:
    """Either ``bundled`` ('calibration' or 'evaluation') or a UTF-8 file at ``path``."""

    bundled: str | None = None
    path: str | None = None

    @staticmethod
    def calibration() -> TextSource:
        return TextSource(bundled="calibration")

    @staticmethod
    def evaluation() -> TextSource:
        return TextSource(bundled="evaluation")

    @property
    def name(self) -> str:
        """What results call it: 'quantdesk-evaluation', or the file's name."""
        return f"quantdesk-{self.bundled}" if self.bundled else Path(self.path or "").name

    def read(self) -> str:
        """The text; PipelineError when a file cannot be read as UTF-8."""
        if self.bundled:
            return _BUNDLED[self.bundled]()
        path = Path(self.path or "")
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PipelineError(f"The text {path} cannot be read: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None

    def sha256(self) -> str:
        return hashlib.sha256(self.read().encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"bundled": self.bundled} if self.bundled else {"path": self.path}

    @staticmethod
    def from_json(data: dict[str, Any]) -> TextSource:
        return TextSource(bundled=data.get("bundled"), path=data.get("path"))
