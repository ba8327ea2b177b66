"""Fixtures for GUI tests: storage in the test's home, an engine that is always shut down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.core.settings import Settings
from app.core.storage import Storage
from app.engine.probe import full_profile
from app.jobs.engine_client import EngineClient
from app.ui.main_window import MainWindow


@pytest.fixture
def store() -> Iterator[Storage]:
    s = Storage()
    yield s
    s.close()


@pytest.fixture
def engines() -> Iterator[list[EngineClient]]:
    """Engines made by a test; every one is shut down at the end, whatever happened."""
    made: list[EngineClient] = []
    yield made
    for engine in made:
        engine.shutdown()


@pytest.fixture
def make_window(qtbot: QtBot, engines: list[EngineClient]) -> Callable[[Path | None],
                                                                         MainWindow]:
    def make(embedded: Path | None) -> MainWindow:
        engine = EngineClient()
        engines.append(engine)
        window = MainWindow(probe=full_profile, embedded_model=embedded, store=Storage(),
                            engine=engine, settings=Settings(), save_settings=False)
        qtbot.addWidget(window)
        return window

    return make
