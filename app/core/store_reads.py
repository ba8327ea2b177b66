"""Reads of the database from worker threads (the pages' background reads of evaluations and
measured loads).

A sqlite connection belongs to the thread that opened it, so each read opens its own
``Storage`` and closes it. Opening is serialized within the process: on a database that does
not exist yet, connections opened at the same moment would each run the migrations and switch
the file to WAL, and SQLite answers all but one 'table already exists' or 'database is locked'.
The reads themselves run side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from app.core.storage import Storage

T = TypeVar("T")
_OPENING = threading.Lock()


def read(fn: Callable[[Storage], T]) -> T:
    """``fn`` called with a connection of this thread to the app's database, then closed.
    Raises StorageError when the database cannot be opened."""
    with _OPENING:
        store = Storage()
    try:
        return fn(store)
    finally:
        store.close()
