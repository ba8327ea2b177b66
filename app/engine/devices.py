"""llama.cpp's own view of the machine: its backends and devices, through ggml's registry.

Wraps the few ggml backend-registry functions once, with typed results. Loading llama.cpp (and
with it a GPU driver) happens here, so callers in the GUI use ``app.engine.probe`` to run this in
a child process.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

from app.core.hardware import BackendDevice, LlamaBuild

_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@cache
def libggml() -> Any:
    """The libggml that llama.cpp itself uses (no signatures set).

    Found through libllama's handle: a symbol looked up there resolves in libllama's own
    dependencies, the copy of libggml whose backend registry llama.cpp reads. llama-cpp-python's
    ``_ggml`` module opens ``libggml.so`` by path, which on Linux is a second copy beside
    libllama's ``libggml.so.0`` (another file), with a registry of its own; it is the fallback
    where libllama's handle does not reach ggml (Windows' GetProcAddress looks in one module).
    """
    import llama_cpp  # loads libllama and, through it, libggml

    llama = llama_cpp.llama_cpp._lib
    view = ctypes.CDLL(llama._name, handle=llama._handle)  # own function objects
    try:
        view.ggml_backend_reg_by_name  # noqa: B018 - a lookup that may fail
        return view
    except AttributeError:
        from llama_cpp._ggml import libggml as lib
        return lib


def _ggml() -> Any:
    """libggml with the backend-registry signatures set."""
    lib = libggml()
    vp = ctypes.c_void_p
    for name, argtypes, restype in (
        ("ggml_backend_reg_count", [], ctypes.c_size_t),
        ("ggml_backend_reg_get", [ctypes.c_size_t], vp),
        ("ggml_backend_reg_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_count", [], ctypes.c_size_t),
        ("ggml_backend_dev_get", [ctypes.c_size_t], vp),
        ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_description", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(ctypes.c_size_t),
                                     ctypes.POINTER(ctypes.c_size_t)], None),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_backend_load_all", [], None),
    ):
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def read_llama_build() -> LlamaBuild:
    """Enumerate llama.cpp's backends and devices with their free and total memory."""
    import llama_cpp

    from app.engine import compat

    lib = _ggml()
    llama_cpp.llama_backend_init()
    if lib.ggml_backend_reg_count() == 0:  # backends built as loadable modules
        lib.ggml_backend_load_all()
    backends = tuple(
        _text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
        for i in range(lib.ggml_backend_reg_count())
    )
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(BackendDevice(
            name=_text(lib.ggml_backend_dev_name(dev)),
            description=_text(lib.ggml_backend_dev_description(dev)),
            kind=_DEVICE_KINDS.get(lib.ggml_backend_dev_type(dev), "unknown"),
            backend=_text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))),
            memory_free=int(free.value) or None,
            memory_total=int(total.value) or None,
        ))
    return LlamaBuild(
        version=getattr(llama_cpp, "__version__", "unknown"),
        backends=backends,
        devices=tuple(devices),
        system_info=_text(llama_cpp.llama_print_system_info()).strip(),
        supports_gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        problems=tuple(compat.problems(llama_cpp)),
    )
