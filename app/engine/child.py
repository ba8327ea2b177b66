"""Run a function in a fresh child process (spawn) and get its outcome, whatever happens there.

llama.cpp may abort, segfault or be killed for memory: that ends the child, never the caller.
The outcome says which: a value, an error raised in the child (``ChildFailed``), a death by exit
code or signal (``ChildCrashed``), or a time-out (``ChildTimeout``, after which the child is
killed).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any, TypeVar

T = TypeVar("T")

_CTX = mp.get_context("spawn")


class ChildError(Exception):
    """Base of everything that can go wrong in a child process."""


class ChildFailed(ChildError):
    """The function raised; ``detail`` holds the child's traceback."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ChildCrashed(ChildError):
    """The child died without answering (abort, segfault, killed)."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        super().__init__(describe_exit(exitcode))


class ChildTimeout(ChildError):
    """The child did not answer in time and was killed."""


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, in words: 'killed by SIGKILL (out of memory?)'."""
    if exitcode is None:
        return "the process is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (often the system ran out of memory)" if -exitcode == signal.SIGKILL else ""
        return f"the process was killed by {name}{hint}"
    return f"the process exited with code {exitcode}"


def _entry(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def call_in_child(fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
    """Call ``fn(*args)`` in a spawned child and return its result (both must pickle)."""
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_entry, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            if proc.is_alive():
                proc.kill()
                proc.join()
                raise ChildTimeout(f"no answer within {timeout:.0f} s")
            raise ChildCrashed(proc.exitcode)
        try:
            message = parent.recv()
        except EOFError:
            proc.join()
            raise ChildCrashed(proc.exitcode) from None
    finally:
        parent.close()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if message[0] == "ok":
        return message[1]  # type: ignore[no-any-return]
    raise ChildFailed(message[1], message[2])


class ChildCancelled(ChildError):
    """The caller cancelled; the child was killed."""


def _stream_entry(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    def send(event: Any) -> None:
        conn.send(("event", event))

    try:
        conn.send(("ok", fn(send, *args)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def stream_from_child(fn: Callable[..., Any], *args: Any,
                      cancel: Callable[[], bool] | None = None,
                      poll: float = 0.1) -> Generator[Any, None, Any]:
    """Run ``fn(send, *args)`` in a spawned child; yield what it sends, then return its result.

    The generator's return value (``StopIteration.value``, or ``yield from``) is ``fn``'s result.
    When ``cancel()`` turns true the child is killed and ChildCancelled raised; a child that
    dies raises ChildCrashed; an exception in ``fn`` raises ChildFailed.
    """
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_stream_entry, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        while True:
            if cancel is not None and cancel():
                proc.kill()
                raise ChildCancelled("cancelled")
            if not parent.poll(poll):
                if not proc.is_alive() and not parent.poll(0):
                    proc.join()
                    raise ChildCrashed(proc.exitcode)
                continue
            try:
                message = parent.recv()
            except EOFError:
                proc.join()
                raise ChildCrashed(proc.exitcode) from None
            if message[0] == "event":
                yield message[1]
            elif message[0] == "ok":
                return message[1]
            else:
                raise ChildFailed(message[1], message[2])
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)


@contextmanager
def child_errors(error: type[Exception], cancelled: type[Exception], *, cancelled_message: str,
                 crashed: str, failed_prefix: str = "", strip: tuple[str, ...] = ()
                 ) -> Iterator[None]:
    """Turn a child's outcome into a job's own errors, the same way for every engine job.

    Cancel → ``cancelled(cancelled_message)``; a death → ``error("<crashed>: <how>.")``; an
    exception in the child → ``error(failed_prefix + message)``, with the child's exception
    names in ``strip`` removed from the front of the message (they mean nothing to a user).
    """
    try:
        yield
    except ChildCancelled:
        raise cancelled(cancelled_message) from None
    except ChildCrashed as exc:
        raise error(f"{crashed}: {exc}.") from None
    except ChildFailed as exc:
        message = str(exc)
        for prefix in strip:
            message = message.removeprefix(prefix)
        raise error(failed_prefix + message) from None
