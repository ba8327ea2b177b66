"""The Hugging Face token, kept in the OS keyring: never in the database, settings or logs.

Every token read or saved here is registered with the log redaction (``app.core.logsetup``),
so that a log line quoting it by accident (an error from the HTTP client, say) hides it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from app.core import logsetup
from app.hub.errors import HubError

log = logging.getLogger(__name__)
SERVICE = "QuantDesk"
ACCOUNT = "huggingface-token"


class KeyringUnavailable(HubError):
    """No OS keyring could be used; the message says what to do."""


def _keyring() -> tuple[Any, tuple[type[Exception], ...]]:
    import keyring
    from keyring.errors import KeyringError, NoKeyringError

    return keyring, (KeyringError, NoKeyringError, RuntimeError)


def get_token() -> str | None:
    """The stored token, or None (also when no keyring is available)."""
    keyring, errors = _keyring()
    try:
        value = keyring.get_password(SERVICE, ACCOUNT)
    except errors as exc:
        log.warning("the OS keyring cannot be read (%s)", type(exc).__name__)
        return None
    if value:
        logsetup.add_secret(value)
    return value or None


def set_token(token: str) -> None:
    """Store the token; raises KeyringUnavailable when the OS offers no keyring."""
    token = token.strip()
    if not token.startswith("hf_") or len(token) < 10:
        raise HubError("That does not look like a Hugging Face token (they start with 'hf_').")
    logsetup.add_secret(token)  # before anything could log it
    keyring, errors = _keyring()
    try:
        keyring.set_password(SERVICE, ACCOUNT, token)
    except errors as exc:
        raise KeyringUnavailable(
            "The token could not be saved: this system offers no keyring "
            f"({type(exc).__name__}). On Linux, install and unlock a Secret Service "
            "(GNOME Keyring or KWallet); QuantDesk never writes tokens to disk itself."
        ) from None


def delete_token() -> None:
    """Forget the token (no error when there is none)."""
    keyring, errors = _keyring()
    with contextlib.suppress(*errors):
        keyring.delete_password(SERVICE, ACCOUNT)
