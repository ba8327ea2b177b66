"""The machine's hardware profile as llama.cpp sees it (the device list is read in a child
process: ``app.engine.probe``)."""

from __future__ import annotations

from app.engine.probe import full_profile

__all__ = ["full_profile"]
