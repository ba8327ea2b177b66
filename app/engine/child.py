"""Run a function in a fresh child process (spawn) and get its outcome, whatever happens there.

llama.cpp may abort, segfault or be killed for memory: that ends the child, never the caller.
The outcome says which: a value, an error raised in the child (``ChildFailed``), a death by exit
code or signal (``ChildCrashed``), or a time-out (``ChildTimeout``, after which the child is
killed).

Starting a child costs about 0.3 s here (a Python interpreter, then ``import llama_cpp``), which is
a third of quantizing a small model. ``keep_warm()`` keeps one spare child started ahead of time,
its imports done, waiting for a task; the next call hands its task to the spare instead of
spawning, and a new spare is started when that call ends (not during it: the job has the CPU).
Every task still gets a process of its own, so a crash or a cancel still ends only that task.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import multiprocessing as mp
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from app.core.atomic import NO_ROOM_ERRNOS

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


# What a signal usually means for a job's child; said after its name.
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: " (often the system ran out of memory)",
    # Python ignores SIGXFSZ (a write fails with EFBIG instead), but native code may restore it
    signal.SIGXFSZ: " (a file grew past the largest size allowed: the file system's limit, or "
                    "a file-size limit set for the process)",
    # a write into a memory-mapped file that the disk has no room for, or a mapped file that
    # shrank under the process (a model file replaced while in use)
    signal.SIGBUS: " (a memory-mapped file could not be written or read: a full disk, or a "
                   "file changed while in use)",
}


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, in words: 'killed by SIGKILL (out of memory?)'."""
    if exitcode is None:
        return "the process is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the process was killed by {name}{_SIGNAL_HINTS.get(-exitcode, '')}"
    return f"the process exited with code {exitcode}"


_watching = False


def exit_with_parent(interval: float = 0.5) -> None:
    """In a child: end this process soon after the process that started it is gone.

    A killed app (SIGKILL, a crash, the out-of-memory killer) cannot stop its children; without
    this a quantizer or evaluation would go on using the CPU for minutes, writing a file nobody
    will rename. The check is a daemon thread polling the parent's pid (a reparented child sees
    another one); ``PR_SET_PDEATHSIG`` is not used because it fires when the *thread* that
    started the child ends, and jobs start children from worker threads.
    """
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _entry(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    exit_with_parent()
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def _spare_entry(conn: Connection, modules: tuple[str, ...]) -> None:
    """A spare child: import what tasks will need, say so, then run the one task it is sent."""
    exit_with_parent()
    for name in modules:
        with contextlib.suppress(Exception):  # the task itself will meet and report the error
            importlib.import_module(name)
    try:
        conn.send(("ready",))
        kind, fn, args, environ, cwd = conn.recv()
    except (EOFError, OSError):  # the parent let the spare go, or died
        return
    # The task sees the parent's environment and folder as of now, as a new child would.
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    (_stream_entry if kind == "stream" else _entry)(conn, fn, args)


@dataclass
class _Spare:
    proc: mp.process.BaseProcess
    conn: Connection
    ready: bool = False

    def poll_ready(self, timeout: float | None = 0.0) -> bool:
        """Whether the spare has done its imports (its first message is 'ready'); waits up to
        ``timeout`` seconds for it (None: until it says so or dies)."""
        if not self.ready and self.proc.is_alive():
            try:
                if self.conn.poll(timeout):
                    self.ready = self.conn.recv() == ("ready",)
            except (EOFError, OSError):
                return False
        return self.ready and self.proc.is_alive()

    def close(self) -> None:
        self.conn.close()  # the spare's recv() ends and it exits
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class _Spares:
    """At most one spare child, started by keep_warm() and replaced after each use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.modules: tuple[str, ...] | None = None
        self.spare: _Spare | None = None

    def start_spare(self) -> None:
        with self.lock:
            if self.modules is None or (self.spare and self.spare.proc.is_alive()):
                return
            parent, child = _CTX.Pipe(duplex=True)
            proc = _CTX.Process(target=_spare_entry, args=(child, self.modules), daemon=True,
                                name="quantdesk-spare")
            proc.start()
            child.close()
            self.spare = _Spare(proc, parent)

    def take(self) -> _Spare | None:
        with self.lock:
            spare, self.spare = self.spare, None
        return spare

    def stop(self) -> None:
        with self.lock:
            self.modules = None
            spare, self.spare = self.spare, None
        if spare is not None:
            spare.close()


_SPARES = _Spares()


# What the engine's jobs (quantize, imatrix, evaluate, the layer view) import in their child.
ENGINE_MODULES = ("llama_cpp", "app.engine.quantize", "app.engine.imatrix",
                  "app.engine.evaluate", "app.engine.layers")


def keep_warm(modules: tuple[str, ...] = ENGINE_MODULES) -> None:
    """Keep a spare child ready, with ``modules`` imported, for the next task (see above)."""
    with _SPARES.lock:
        _SPARES.modules = modules
    _SPARES.start_spare()


def stop_warm() -> None:
    """Let the spare child go; later tasks spawn their own again."""
    _SPARES.stop()


def wait_warm(timeout: float = 30.0) -> bool:
    """Wait until the spare child has done its imports; False if there is none or it died."""
    spare = _SPARES.spare
    return spare is not None and spare.poll_ready(timeout)


def _start(kind: str, fn: Callable[..., Any], args: tuple[Any, ...]
           ) -> tuple[mp.process.BaseProcess, Connection]:
    """A process running ``fn`` (``kind`` 'call' or 'stream'): the spare if any, else a new one."""
    spare = _SPARES.take()
    if spare is not None:
        if spare.poll_ready(timeout=None):  # waits for its imports; False if it died
            try:
                spare.conn.send((kind, fn, args, dict(os.environ), str(Path.cwd())))
                return spare.proc, spare.conn
            except OSError:  # it died just now: spawn instead
                pass
        spare.close()
    parent, child = _CTX.Pipe(duplex=False)
    target = _stream_entry if kind == "stream" else _entry
    proc = _CTX.Process(target=target, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def call_in_child(fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
    """Call ``fn(*args)`` in a spawned child and return its result (both must pickle)."""
    proc, parent = _start("call", fn, args)
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
        _SPARES.start_spare()
    if message[0] == "ok":
        return message[1]  # type: ignore[no-any-return]
    raise ChildFailed(message[1], message[2])


class ChildCancelled(ChildError):
    """The caller cancelled; the child was killed."""


def _stream_entry(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    exit_with_parent()

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
    proc, parent = _start("stream", fn, args)
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
        _SPARES.start_spare()


# How the child reports an OSError raised in it: "OSError: [Errno 28] No space left on device"
_CHILD_OS_ERROR = re.compile(r"^\w+: \[Errno (\d+)\]")


def no_room(path: Path, error: OSError | None = None) -> OSError | None:
    """In the process whose write of ``path`` just failed: the error, if it was for lack of room.

    Native writers report a failed write without its reason: llama.cpp's quantizer says
    "basic_ios::clear: iostream error", numpy's ``tofile`` "4096 requested and 0 written" (an
    OSError without errno). Writing one more byte at the end of the file asks the system the
    same question again and gets its answer: ENOSPC on a full disk, EDQUOT, EFBIG past a size
    limit (a size limit is per process, so this must run where the write failed). The file is
    an unfinished one that its job removes. None when ``error`` is another fault, or when the
    byte could be written (then the failure was something else).
    """
    if error is not None and error.errno is not None:
        return error if error.errno in NO_ROOM_ERRNOS else None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return None  # never created: not a matter of room
    try:
        os.write(fd, b"\0")
    except OSError as exc:
        return exc if exc.errno in NO_ROOM_ERRNOS else None
    finally:
        os.close(fd)
    return None


def no_room_message(err: int, target: Path) -> str:
    """Why ``target`` could not be written (``err``, one of NO_ROOM_ERRNOS), in words a person
    can act on; it follows a job's "<job> failed: "."""
    if err == errno.EFBIG:
        return (f"{target.name} grew larger than the largest file allowed in {target.parent} "
                f"({os.strerror(err)}): the drive's file system (FAT32 holds at most 4 GiB per "
                "file) or a file-size limit set for QuantDesk stops it. Choose a folder on "
                "another drive and try again.")
    full = "the disk quota is used up" if err == errno.EDQUOT else "the disk is full"
    return (f"not enough disk space for {target.name} in {target.parent}: {full} "
            f"({os.strerror(err)}). Free some space there or choose another folder, then try "
            "again.")


def _no_room_errno(message: str) -> int | None:
    match = _CHILD_OS_ERROR.match(message)
    if match is None or int(match[1]) not in NO_ROOM_ERRNOS:
        return None
    return int(match[1])


@contextmanager
def child_errors(error: type[Exception], cancelled: type[Exception], *, cancelled_message: str,
                 crashed: str, failed_prefix: str = "", strip: tuple[str, ...] = (),
                 target: Path | None = None) -> Iterator[None]:
    """Turn a child's outcome into a job's own errors, the same way for every engine job.

    Cancel → ``cancelled(cancelled_message)``; a death → ``error("<crashed>: <how>.")``; an
    exception in the child → ``error(failed_prefix + message)``, with the child's exception
    names in ``strip`` removed from the front of the message (they mean nothing to a user).
    A job that writes ``target`` gets, for a write that found no room (an OSError with
    ENOSPC, EDQUOT or EFBIG in the child, see ``no_room``, or a death by SIGXFSZ),
    ``error(failed_prefix + no_room_message(...))`` instead of the system's bare words.
    """
    try:
        yield
    except ChildCancelled:
        raise cancelled(cancelled_message) from None
    except (ChildCrashed, ChildTimeout) as exc:
        if target is not None and isinstance(exc, ChildCrashed) \
                and exc.exitcode == -signal.SIGXFSZ:
            raise error(failed_prefix + no_room_message(errno.EFBIG, target)) from None
        raise error(f"{crashed}: {exc}.") from None
    except ChildFailed as exc:
        message = str(exc)
        err = _no_room_errno(message)
        if target is not None and err is not None:
            raise error(failed_prefix + no_room_message(err, target)) from None
        for prefix in strip:
            message = message.removeprefix(prefix)
        raise error(failed_prefix + message) from None
