"""One reply's token loop in C (``app/engine/_token_loop.c``), where it was built.

A reply's tokens after the first come from a loop of ``llama_decode`` and
``llama_sampler_sample``. In Python each turn of that loop costs 20-45 µs (the ctypes calls,
the batch, the checks, and Python's working set gone cold during the decode): nothing for a 7B
model's 50 ms token, but 10-15% of a token for a model that decodes in a few hundred µs (a
small model, a GPU). The C loop decodes on the same context (through llama.cpp's extended
batch, ``llama_process``, as its own tools do) and samples with the same sampler, and comes
back to Python when there is something to do (``Chunk.end`` says what): the tokens' text, stop
strings and events are Python's, as before (``Generator.run``).

The extension is built by the package's install (``pyproject.toml``), optionally: without a C
compiler the install goes on, ``available()`` is False and the Python loop runs. It takes
libllama's functions by address from the bindings (``init``), so it needs no llama.h to build
and always calls the libllama the bindings loaded. ``QUANTDESK_TOKEN_LOOP=python`` keeps
generation in Python regardless (for comparisons).
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

# At most this long in C before Python runs again (a request that cannot be polled from C, on
# Windows, waits at most this long; POSIX wakes at once).
MAX_SECONDS = 0.05


class End(enum.IntEnum):
    """Why the C loop came back (the values are ``_token_loop.c``'s)."""

    EOG = 0  # the last token ends generation
    BUDGET = 1  # the tokens asked for are sampled
    STOP = 2  # the stop slot asked to stop (after a decode, before the next sample)
    DUE = 3  # the reader can take an event, a request is waiting, or MAX_SECONDS passed
    ERROR = 4  # a decode failed (``status``, as llama_decode's)


@dataclass(frozen=True)
class Chunk:
    """What one call of the C loop did: ``tokens`` sampled, of which the first ``decoded - 1``
    were decoded too (with the token it started from: ``decoded`` decodes in all)."""

    tokens: list[int]
    decoded: int
    end: End
    status: int


@dataclass(frozen=True)
class Pace:
    """When the loop must come back for the reader: its stop slot (the address of an int64 that
    holds ``stop_value`` when Stop is asked; 0: none), its read count (the address of an int64
    that reaches ``sent`` when the reader has read every event; 0: always), ``wait`` seconds
    from now before the next event may go (negative: none), and a connection to watch for
    requests (its file descriptor; -1: none)."""

    stop_slot: int = 0
    stop_value: int = -1
    consumed_slot: int = 0
    sent: int = 0
    wait: float = -1.0
    fd: int = -1


# libllama's functions the C loop calls, in the order its init() takes them
_FUNCTIONS = ("llama_batch_ext_init", "llama_batch_ext_free", "llama_batch_ext_clear",
              "llama_batch_ext_add_token", "llama_batch_ext_set_pos",
              "llama_batch_ext_set_output_logits", "llama_process", "llama_sampler_sample",
              "llama_vocab_is_eog")


@cache
def _loop() -> Callable[..., tuple[list[int], int, int, int]] | None:
    """The C loop's ``run``, given libllama's functions, or None where it cannot be used."""
    if os.environ.get("QUANTDESK_TOKEN_LOOP", "").lower() == "python":
        return None
    try:
        import llama_cpp.llama_cpp as bindings

        from app.engine import _token_loop  # type: ignore[attr-defined]

        addresses = [ctypes.cast(getattr(bindings._lib, name), ctypes.c_void_p).value or 0
                     for name in _FUNCTIONS]
        _token_loop.init(*addresses)  # ValueError for one without an address
        run: Callable[..., tuple[list[int], int, int, int]] = _token_loop.run
        return run
    except (ImportError, OSError, AttributeError, ValueError) as exc:
        log.info("the token loop in C is not used (%s): generation runs in Python", exc)
        return None


def available() -> bool:
    """Whether the C loop was built and fits these bindings."""
    return _loop() is not None


def run(ctx: Any, sampler: Any, vocab: Any, *, token: int, pos: int, seq: int, budget: int,
        ignore_eog: bool, pace: Pace) -> Chunk:
    """Decode ``token`` at ``pos`` of sequence ``seq`` and go on sampling and decoding, at most
    ``budget`` tokens, until ``pace`` or the reply needs Python (``End``). ``ctx``,
    ``sampler``, ``vocab`` are the bindings' handles. Only when ``available()``."""
    loop = _loop()
    assert loop is not None, "the C token loop is not available"

    def pointer(handle: Any) -> int:
        return ctypes.cast(handle, ctypes.c_void_p).value or 0

    tokens, decoded, end, status = loop(
        pointer(ctx), pointer(sampler), pointer(vocab), token, pos, seq, budget, int(ignore_eog),
        pace.stop_slot, pace.stop_value, pace.consumed_slot, pace.sent,
        round(pace.wait * 1e9), round(MAX_SECONDS * 1e9), pace.fd)
    return Chunk(tokens, decoded, End(end), status)
