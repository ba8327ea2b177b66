"""Logging for the app: a rotating file under the data folder, warnings to stderr.

Secrets never reach either (DESIGN: a Hugging Face token goes to the keyring only). The app
does not log tokens, but a log line can quote what it did not write itself: an exception from
the HTTP client, a server's error text, a library's debug dump of a request. So both handlers
redact, from every message and traceback: the tokens QuantDesk has read or saved (registered
with ``add_secret``), anything shaped like a Hugging Face token (``hf_…``), and the value of a
``Bearer`` authorization.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import threading

from app.core import paths

_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"
# Hugging Face tokens: "hf_" and 34 letters and digits (shorter runs are names, "hf_models")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_MIN_SECRET = 8  # shorter values would redact ordinary words

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str) -> None:
    """Redact ``value`` from every log record from now on (a token read from the keyring)."""
    if len(value) >= _MIN_SECRET:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every secret (see the module's doc) replaced by ``<redacted>``."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, REDACTED)
    text = _HF_TOKEN.sub(REDACTED, text)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """A handler filter that redacts secrets from a record's message, traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                # formatted here, once: handlers reuse exc_text instead of formatting again
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:  # a record whose message cannot be built: the handler reports that
            pass
        return True


def configure(level: int = logging.INFO) -> None:
    """Set up the root logger once; later calls do nothing."""
    root = logging.getLogger()
    if getattr(root, "_quantdesk_configured", False):
        return
    root.setLevel(level)
    file_handler = logging.handlers.RotatingFileHandler(
        paths.logs_dir() / "quantdesk.log", maxBytes=5 * 1024**2, backupCount=3, encoding="utf-8"
    )
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler.addFilter(RedactSecrets())
    root.addHandler(file_handler)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(RedactSecrets())
    root.addHandler(console)
    root._quantdesk_configured = True  # type: ignore[attr-defined]
