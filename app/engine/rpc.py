"""llama.cpp's RPC backend: load a model across other machines' devices, and share this one's.

Each machine that lends its devices runs ggml's RPC server (``RpcServer`` here, or llama.cpp's
``rpc-server``); the loading machine registers the servers' devices and llama.cpp places layers
on them as on local GPUs (``load_devices``, used by ``load_params.model_params``). Both ends go
through the libggml that llama-cpp-python already loaded — found through libllama's own
handle, since llama-cpp-python's ``_ggml`` module opens a second copy of libggml with a
registry of its own — and the functions come from the RPC backend's registry entry
(``ggml_backend_reg_get_proc_address``), as llama.cpp's tools get them.

llama.cpp aborts the process when a server cannot be reached (``GGML_ABORT``), so every endpoint
is first asked for its protocol version here, in Python, with a time-out (``hello``): a server
that is down, busy with another client (it serves one at a time) or of another protocol version
is a clear ``RpcError`` before llama.cpp touches it. A server lost during a reply still aborts
the engine child; ``crash_hint`` names the endpoint that went away, and the child logs it too.

llama.cpp's RPC has no authentication and no encryption: a server is for a trusted network only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from app.core.addresses import is_loopback as is_loopback  # part of this module's API
from app.core.hardware import RemoteDevice, RemoteServer
from app.engine.generation import GenerationError

log = logging.getLogger(__name__)

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
LOCAL_HOST = "127.0.0.1"
PROTO_MAJOR = 7  # RPC_PROTO_MAJOR_VERSION in ggml-rpc.h of the pinned llama.cpp
_CMD_HELLO = 14  # RPC_CMD_HELLO: "must be always 14", the one command stable across versions
_CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE
SECURITY_WARNING = (
    "llama.cpp's RPC server has no authentication and no encryption: anyone who can reach "
    "this address can use this machine's memory and devices and read what is computed. "
    "Offer it on a trusted network only, never on the internet.")


class RpcError(GenerationError):
    """An RPC server cannot be used; the message names it and says what to do."""


# --- endpoints ---------------------------------------------------------------------------------


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); ValueError in words."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not host:port (for example 192.168.1.20:{DEFAULT_PORT})")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    return host.removeprefix("[").removesuffix("]"), port


def normalize(text: str) -> str:
    """An endpoint as llama.cpp takes it: 'host:port'."""
    host, port = parse_endpoint(text)
    return f"{host}:{port}"


def _connect(endpoint: str, timeout: float) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    return socket.create_connection((host, port), timeout=timeout)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionResetError("the server closed the connection")
        data += part
    return data


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def hello(endpoint: str, timeout: float = 3.0) -> tuple[int, int, int]:
    """Ask the server at ``endpoint`` for its protocol version (RPC_CMD_HELLO), as llama.cpp's
    client does first; RpcError in words when it is down, busy or incompatible."""
    request = struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS) + bytes(_CONN_CAPS)
    try:
        sock = _connect(endpoint, timeout)
    except (OSError, ValueError) as exc:
        raise RpcError(f"The RPC server at {endpoint} cannot be reached ({_why(exc)}). Start "
                       "it there ('quantdesk rpc-serve', or Share this machine on its Hardware "
                       "page) or remove it from the list of other machines.") from exc
    try:
        with sock:
            sock.sendall(request)
            size = struct.unpack("<Q", _recv_exact(sock, 8))[0]
            answer = _recv_exact(sock, min(size, 64))
    except TimeoutError as exc:
        raise RpcError(
            f"The RPC server at {endpoint} did not answer within {timeout:.0f} s: it is "
            "probably serving another client (a server takes one at a time: another chat, "
            "comparison or QuantDesk).") from exc
    except OSError as exc:
        raise RpcError(f"The RPC server at {endpoint} closed the connection ({_why(exc)}): it "
                       "may be another program, or a llama.cpp of another version.") from exc
    if len(answer) < 3:
        raise RpcError(f"{endpoint} did not answer as a llama.cpp RPC server does.")
    version = (answer[0], answer[1], answer[2])
    if version[0] != PROTO_MAJOR:
        raise RpcError(f"The RPC server at {endpoint} speaks protocol {'.'.join(map(str, version))}"
                       f", this QuantDesk {PROTO_MAJOR}.x: run the same llama.cpp version on "
                       "both machines.")
    return version


def unreachable(endpoint: str, timeout: float = 1.0) -> str | None:
    """Why nothing can connect to ``endpoint`` now, or None when something listens there."""
    try:
        with _connect(endpoint, timeout):
            return None
    except (OSError, ValueError) as exc:
        return _why(exc)


def crash_hint(endpoints: Iterable[str], timeout: float = 3.0) -> str:
    """After an engine using ``endpoints`` died: which of them went away, in words ('' if none
    did, or there were none). A server finishing with the dead engine's connection queues new
    ones (its listen backlog is 1, so a third waits for the client's SYN retry, 1 s later):
    the time-out leaves room for that."""
    gone = [(e, why) for e in endpoints if (why := unreachable(e, timeout)) is not None]
    if not gone:
        return ""
    names = ", ".join(f"{e} ({why})" for e, why in gone)
    return (f" The RPC server at {names} cannot be reached any more: llama.cpp ends the engine "
            "when a server holding part of the model goes away. Reload without it, or start it "
            "again.")


# --- ggml's side -------------------------------------------------------------------------------


def _lib() -> Any:
    """ggml's registry functions from the libggml that libllama uses (see the module text)."""
    import llama_cpp

    from app.engine.devices import libggml

    lib = libggml()
    vp = ctypes.c_void_p
    for name, argtypes, restype in (
        ("ggml_backend_reg_by_name", [ctypes.c_char_p], vp),
        ("ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
        ("ggml_backend_reg_dev_count", [vp], ctypes.c_size_t),
        ("ggml_backend_reg_dev_get", [vp, ctypes.c_size_t], vp),
        ("ggml_backend_dev_by_name", [ctypes.c_char_p], vp),
        ("ggml_backend_dev_count", [], ctypes.c_size_t),
        ("ggml_backend_dev_get", [ctypes.c_size_t], vp),
        ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_backend_reg_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(ctypes.c_size_t),
                                     ctypes.POINTER(ctypes.c_size_t)], None),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    llama_cpp.llama_backend_init()
    return lib


_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


def _proc(lib: Any, name: str, prototype: Any) -> Any:
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError("This llama-cpp-python was built without ggml's RPC backend: rebuild it "
                       "with -DGGML_RPC=ON (make run does, through packaging/llama-wheel.sh).")
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise RpcError(f"This llama.cpp's RPC backend has no {name}.")
    return prototype(address)


def supported() -> bool:
    """Whether the llama.cpp that QuantDesk loads has the RPC backend."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_rpc())


_added: dict[str, list[int]] = {}  # endpoint → its devices (ggml_backend_dev_t), this process
_device_lists: dict[tuple[str, ...], Any] = {}  # kept alive: llama.cpp reads them at load
_on_abort: Any = None


def _log_abort(message: bytes | None) -> None:
    # Runs on llama.cpp's thread just before it aborts the process: say which server is gone
    # (the parent keeps the child's last log lines).
    text = (message or b"").decode("utf-8", "replace").strip()
    hint = ""
    for _ in range(5):  # a server killed just now may still be closing its listening socket
        hint = crash_hint(_added)
        if hint:
            break
        time.sleep(0.2)
    log.error("llama.cpp aborted: %s.%s", text, hint)


def add_servers(endpoints: Sequence[str], timeout: float = 3.0) -> list[int]:
    """Make the devices of the RPC servers at ``endpoints`` known to llama.cpp in this process;
    returns them in order. Each server is asked ``hello`` first: RpcError, before anything is
    placed, when one cannot be used."""
    global _on_abort
    endpoints = [normalize(e) for e in endpoints]
    for endpoint in endpoints:
        if endpoint not in _added:
            hello(endpoint, timeout)
    lib = _lib()
    add = _proc(lib, "ggml_backend_rpc_add_server", _ADD_SERVER)
    if _on_abort is None:
        _on_abort = _ABORT_CALLBACK(_log_abort)
        lib.ggml_set_abort_callback.argtypes = [_ABORT_CALLBACK]
        lib.ggml_set_abort_callback.restype = ctypes.c_void_p
        lib.ggml_set_abort_callback(_on_abort)
    devices: list[int] = []
    for endpoint in endpoints:
        if endpoint not in _added:
            reg = add(endpoint.encode())
            if not reg:
                raise RpcError(f"The RPC server at {endpoint} offers no devices.")
            _added[endpoint] = [lib.ggml_backend_reg_dev_get(reg, i)
                                for i in range(lib.ggml_backend_reg_dev_count(reg))]
            log.info("RPC server %s: %d device(s)", endpoint, len(_added[endpoint]))
        devices += _added[endpoint]
    return devices


def load_devices(endpoints: Sequence[str]) -> Any:
    """The ``llama_model_params.devices`` list for a load across ``endpoints``: their devices
    first, then this machine's GPUs — llama.cpp's own default order — NULL-terminated; None
    (llama.cpp's default choice) for a local load in a process that never used a server."""
    key = tuple(normalize(e) for e in endpoints)
    if not key and not _added:
        return None
    remote = add_servers(key)
    lib = _lib()
    gpus, igpus = [], []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        if lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)) == b"RPC":
            continue
        if kind == 1:  # GGML_BACKEND_DEVICE_TYPE_GPU
            gpus.append(dev)
        elif kind == 2:  # IGPU: only without a discrete GPU, as llama.cpp does
            igpus.append(dev)
    chosen = remote + gpus + ([] if gpus else igpus)
    array = (ctypes.c_void_p * (len(chosen) + 1))(*chosen, None)
    _device_lists[key] = array
    return array


def _read_servers(endpoints: tuple[str, ...], timeout: float) -> tuple[RemoteServer, ...]:
    lib = None
    servers = []
    for endpoint in endpoints:
        try:
            devices = add_servers([endpoint], timeout)
        except RpcError as exc:
            servers.append(RemoteServer(endpoint, problem=str(exc)))
            continue
        lib = lib or _lib()
        found = []
        for i, dev in enumerate(devices):
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            found.append(RemoteDevice(endpoint, i, (lib.ggml_backend_dev_name(dev) or b"").decode(),
                                      int(free.value), int(total.value)))
        servers.append(RemoteServer(endpoint, tuple(found)))
    return tuple(servers)


def remote_servers(endpoints: Sequence[str], timeout: float = 3.0) -> tuple[RemoteServer, ...]:
    """Each server's devices with their free and total memory as llama.cpp reports them, or
    why it cannot be used; read in a child process (llama.cpp may abort on a server that goes
    away meanwhile). Never raises."""
    from app.engine.child import ChildError, call_in_child

    valid: list[str] = []
    bad: dict[str, str] = {}
    for text in endpoints:
        try:
            valid.append(normalize(text))
        except ValueError as exc:
            bad[text] = str(exc)
    found: dict[str, RemoteServer] = {}
    if valid:
        try:
            found = {s.endpoint: s for s in call_in_child(
                _read_servers, tuple(valid), timeout, timeout=timeout * len(valid) + 60)}
        except ChildError as exc:
            found = {e: RemoteServer(e, problem=f"could not be read: {exc}") for e in valid}
    return tuple(RemoteServer(t, problem=bad[t]) if t in bad else found[normalize(t)]
                 for t in endpoints)


# --- sharing this machine ----------------------------------------------------------------------


def local_devices() -> list[tuple[str, bool]]:
    """This machine's devices as llama.cpp names them, each with whether it is a CPU (or an
    accelerator beside one)."""
    lib = _lib()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        found.append(((lib.ggml_backend_dev_name(dev) or b"").decode(),
                      lib.ggml_backend_dev_type(dev) in (0, 3)))
    return found


def default_devices() -> list[str]:
    """What a server offers unless told: this machine's GPUs, or the CPU when it has none
    (llama.cpp's rpc-server rule)."""
    found = local_devices()
    return [n for n, cpu in found if not cpu] or [n for n, cpu in found if cpu][:1]


def serve(endpoint: str, devices: Sequence[str] = (), threads: int | None = None,
          ready: Any = None) -> None:
    """Run ggml's RPC server at ``endpoint`` offering ``devices`` (names as llama.cpp lists
    them: 'CPU', 'CUDA0'); blocks for good. ``ready`` (a connection) is sent None once the
    address is bound-checked, or the error's text."""
    try:
        host, port = parse_endpoint(endpoint)
        lib = _lib()
        start = _proc(lib, "ggml_backend_rpc_start_server", _START_SERVER)
        names = list(devices) or default_devices()
        handles = []
        for name in names:
            dev = lib.ggml_backend_dev_by_name(name.encode())
            if not dev:
                raise RpcError(f"No device named {name!r} here; there are: "
                               + ", ".join(n for n, _ in local_devices()))
            handles.append(dev)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise RpcError(f"Cannot listen on {host}:{port}: {_why(exc)} (another server "
                               "there already? pick another port).") from exc
    except (RpcError, ValueError) as exc:
        if ready is None:
            raise
        ready.send(str(exc))
        return
    if ready is not None:
        ready.send(None)
    array = (ctypes.c_void_p * len(handles))(*handles)
    n_threads = threads or os.cpu_count() or 1
    start(f"{host}:{port}".encode(), None, n_threads, len(handles), array)
    raise RpcError(f"The RPC server at {host}:{port} stopped (it could not listen there).")


def _serve_child(endpoint: str, devices: tuple[str, ...], threads: int | None,
                 ready: Any, with_parent: bool, quiet: bool) -> None:
    from app.engine import llama_log
    from app.engine.child import exit_with_parent

    if with_parent:
        exit_with_parent()
    if quiet:
        # ggml's server prints a line per client to stdout (not through llama.cpp's log);
        # this process is only the server, so its stdout goes nowhere unless asked for
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    llama_log.install()
    serve(endpoint, devices, threads, ready)


class RpcServer:
    """ggml's RPC server in a child process of its own: started, checked, stopped."""

    def __init__(self, host: str = LOCAL_HOST, port: int = DEFAULT_PORT,
                 devices: Sequence[str] = (), threads: int | None = None,
                 quiet: bool = True) -> None:
        self.host, self.port = host, port
        self.devices = tuple(devices)
        self.threads = threads
        self.quiet = quiet  # False: ggml's lines (a client connected, left) on stdout
        self._proc: mp.process.BaseProcess | None = None

    @property
    def endpoint(self) -> str:
        """'host:port' as clients name it (loopback when bound to every address)."""
        host = LOCAL_HOST if self.host in ("0.0.0.0", "::") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    @property
    def alive(self) -> bool:
        """Whether the server process runs."""
        return self._proc is not None and self._proc.is_alive()

    def start(self, timeout: float = 30.0, with_parent: bool = True) -> RpcServer:
        """Start the server and wait until it answers ``hello``; RpcError in words if not.
        ``with_parent``: the server ends soon after this process does."""
        ctx = mp.get_context("spawn")
        theirs, ours = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_serve_child, name="quantdesk-rpc-server", daemon=True,
                                 args=(f"{self.host}:{self.port}", self.devices, self.threads,
                                       ours, with_parent, self.quiet))
        self._proc.start()
        ours.close()
        deadline = time.monotonic() + timeout
        try:
            if not theirs.poll(timeout):
                raise RpcError(f"The RPC server for {self.endpoint} did not start in time.")
            problem = theirs.recv()
        except EOFError:
            problem = f"the server process ended at start ({self._proc.exitcode})"
        finally:
            theirs.close()
        if problem:
            self.stop()
            raise RpcError(problem)
        while True:
            try:
                hello(self.endpoint, timeout=2.0)
                return self
            except RpcError:
                if not self.alive or time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """End the server (clients using it lose it)."""
        if self._proc is None:
            return
        with contextlib.suppress(Exception):
            self._proc.kill()
        self._proc.join(5)
        self._proc = None

    def __enter__(self) -> RpcServer:
        return self.start() if self._proc is None else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
