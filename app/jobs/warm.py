"""A spare engine child kept ready while the user is about to quantize or compare, so that a job
does not wait 0.3 s for Python and llama.cpp to start (``app.engine.child.keep_warm``)."""

from __future__ import annotations

from app.engine.child import keep_warm, stop_warm

__all__ = ["keep_warm", "stop_warm"]
