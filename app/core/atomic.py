"""Write files so that a crash or a full disk never leaves a half-written file behind.

The content goes to a temporary file in the target's own folder (same filesystem, so the
final rename is atomic), is flushed to disk, and only then replaces the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PARTIAL_SUFFIX = ".part"
# Errors of a write that found no room: a full disk, a full quota, a file larger than the file
# system (FAT32: 4 GiB) or the process's file-size limit allows. One rule for every writer
# (downloads, engine jobs).
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def atomic_output(target: Path, mode: str = "wb") -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``target``; on success rename it onto ``target``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    target is left exactly as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` (UTF-8) atomically."""
    with atomic_output(target) as handle:
        handle.write(text.encode("utf-8"))
