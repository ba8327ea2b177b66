"""Where QuantDesk keeps its files.

Everything lives under one folder: ``platformdirs.user_data_dir("QuantDesk")`` or, when set,
the ``QUANTDESK_HOME`` environment variable (tests always set it to a temporary folder).

A name that comes from elsewhere (a Hugging Face repo id or file name) becomes a path only
through ``contained``, which refuses any name that would not stay inside its folder.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import platformdirs

APP_NAME = "QuantDesk"
HOME_ENV = "QUANTDESK_HOME"


def _home() -> Path:
    override = os.environ.get(HOME_ENV)
    return Path(override).expanduser() if override else Path(platformdirs.user_data_dir(APP_NAME))


def data_home() -> Path:
    """Return the app's data folder, creating it if needed."""
    home = _home()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _subdir(name: str) -> Path:
    path = data_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Folder where downloaded, converted and quantized models are written."""
    return _subdir("models")


def checkpoints_dir() -> Path:
    """Folder for Hugging Face checkpoints fetched for conversion (can be deleted afterwards)."""
    return _subdir("checkpoints")


def logs_dir() -> Path:
    """Folder for the app's rotating log files."""
    return _subdir("logs")


def cache_dir() -> Path:
    """Folder for data the app can rebuild (probe results, reference distributions)."""
    return _subdir("cache")


def cache_location() -> Path:
    """Where ``cache_dir`` is, without making it (for data that may never be written)."""
    return _home() / "cache"


def settings_path() -> Path:
    """The settings file (JSON, written atomically)."""
    return data_home() / "settings.json"


def database_path() -> Path:
    """The SQLite database of chats, the model library and evaluation results."""
    return data_home() / "quantdesk.sqlite3"


# --- names from elsewhere -------------------------------------------------------------------
# A Hugging Face repo id or file name is chosen by whoever published it (or by whatever answers
# at the hub's address). Before it becomes a path on this machine, every component must be a
# plain name that stays inside its folder on every OS QuantDesk runs on: Windows reads '\' and
# 'C:' as path syntax and silently drops trailing dots and spaces ('.. ' is '..' there).

MAX_NAME_BYTES = 255  # the longest file name ext4, APFS and NTFS all accept
_WINDOWS_RESERVED_CHARS = frozenset('<>:"|?*')
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
                              *(f"LPT{i}" for i in range(10))})


class UnsafeName(ValueError):
    """A name from elsewhere that would not stay a plain name inside its folder."""


def _shown(name: str, limit: int = 80) -> str:
    """The name as a message can show it: control characters escaped, long names shortened."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def _refusal(component: str, room: int) -> str | None:
    """Why ``component`` is not a plain file or folder name, or None when it is."""
    if component == "":
        return "has an empty folder name (a doubled, leading or trailing '/')"
    if component in (".", ".."):
        return f"contains {component!r}, which points at a folder instead of naming a file"
    if len(component) >= 2 and component[1] == ":" and component[0].isascii() \
            and component[0].isalpha():
        return "starts with a drive letter"
    if "\\" in component:
        return "contains a backslash, which Windows reads as a folder separator"
    for char in component:
        category = unicodedata.category(char)
        if category == "Cc":
            return f"contains the control character U+{ord(char):04X}"
        if category == "Cs":
            return "is not valid Unicode (it holds a lone surrogate)"
        if char in _WINDOWS_RESERVED_CHARS:
            return f"contains {char!r}, which Windows does not allow in file names"
    if component.endswith((".", " ")):
        return "ends with a dot or a space, which Windows drops from file names"
    if component.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return "is a device name on Windows, not a file"
    size = len(component.encode("utf-8"))
    if size + room > MAX_NAME_BYTES:
        return (f"has a component of {size} bytes; file names can have at most "
                f"{MAX_NAME_BYTES - room}")
    return None


def contained(base: Path, *remote_parts: str, room: int = 0) -> Path:
    """``base`` joined with names that came from elsewhere, refused unless they stay inside it.

    Each of ``remote_parts`` is a '/'-separated relative name, as the hub writes them (a repo id
    ``org/model``, a file name ``sub/x.gguf``). Every component must be a plain name: not empty,
    not '.' or '..', no absolute path, drive letter, backslash, control character or character
    Windows refuses, no trailing dot or space, no Windows device name, and at most
    MAX_NAME_BYTES bytes in UTF-8 with ``room`` bytes to spare for a suffix added later (a
    download's '.part'). Raises UnsafeName saying which name and why; touches no file.
    """
    components: list[str] = []
    for index, part in enumerate(remote_parts):
        if part.startswith("/"):
            raise UnsafeName(f"the name {_shown(part)} is an absolute path")
        pieces = part.split("/")
        for position, component in enumerate(pieces):
            last = index == len(remote_parts) - 1 and position == len(pieces) - 1
            reason = _refusal(component, room if last else 0)
            if reason is not None:
                raise UnsafeName(f"the name {_shown(part)} {reason}")
            components.append(component)
    return base.joinpath(*components)
