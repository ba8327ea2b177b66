"""A persistent CPU thread pool for a llama.cpp context, as llama.cpp's own tools attach one.

Without one, a ggml CPU backend built without OpenMP (MSVC's and Apple clang's builds) creates
a thread pool for every graph it computes and joins it afterwards: for generation that is one
pool per token (with OpenMP, libgomp keeps its threads and the pool changes little). On a
fast model (a small one, or a GPU doing most of the work) that start-up is a large part of
each token's time; llama-bench and
llama-cli attach a pool for the context's life, whose threads wait between tokens (polling
briefly, then sleeping). ``attach`` does the same for a context made through llama-cpp-python.

The functions come from the ggml that libllama itself loaded (``app.engine.devices.libggml``:
not the second copy llama-cpp-python's ``_ggml`` module opens): ``ggml_threadpool_params_init``
from ggml-base, ``ggml_threadpool_new`` and ``ggml_threadpool_free`` through the CPU backend's
registry entry (how llama-bench finds them), and ``llama_attach_threadpool`` from libllama.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

MAX_THREADS = 512  # GGML_MAX_N_THREADS: the size of the pool parameters' CPU mask


class _PoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class _Api:
    def __init__(self) -> None:
        import llama_cpp.llama_cpp as bindings

        from app.engine.devices import libggml

        # symbols looked up through libllama's own handle: the ggml copy llama.cpp uses
        ggml = libggml()
        ggml.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_PoolParams), ctypes.c_int]
        ggml.ggml_threadpool_params_init.restype = None
        self.params_init = ggml.ggml_threadpool_params_init
        ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        reg = ggml.ggml_backend_reg_by_name(b"CPU")
        new = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_new") if reg else None
        free = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_free") if reg else None
        if not (new and free):
            raise OSError("this llama.cpp build's CPU backend offers no thread pool")
        self.new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_PoolParams))(new)
        self.free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free)
        lib = bindings._lib
        lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                ctypes.c_void_p]
        lib.llama_attach_threadpool.restype = None
        lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
        lib.llama_detach_threadpool.restype = None
        self.attach = lib.llama_attach_threadpool
        self.detach = lib.llama_detach_threadpool


@cache
def _api() -> _Api | None:
    try:
        return _Api()
    except (OSError, AttributeError) as exc:  # an unusual build: ggml's per-graph pools remain
        log.info("no persistent thread pool for generation: %s", exc)
        return None


class ThreadPool:
    """A pool of ``n_threads`` attached to ``ctx`` until ``close()``; a no-op where the build
    offers none."""

    def __init__(self, ctx: Any, n_threads: int) -> None:
        self._ctx: Any = None
        self._pool: int | None = None
        api = _api()
        if api is None:
            return
        params = _PoolParams()
        api.params_init(ctypes.byref(params), n_threads)
        pool = api.new(ctypes.byref(params))
        if not pool:
            log.info("ggml could not create a thread pool of %d threads", n_threads)
            return
        api.attach(ctx, pool, None)  # one pool for prompts and generation alike
        self._ctx, self._pool = ctx, pool

    @property
    def attached(self) -> bool:
        return self._pool is not None

    def close(self) -> None:
        """Detach from the context (before the context is freed) and end the threads."""
        api = _api()
        if api is None or self._pool is None:
            return
        api.detach(self._ctx)
        api.free(self._pool)
        self._ctx = self._pool = None
