"""What the engine relies on in llama-cpp-python beyond its documented API, checked in one place.

QuantDesk calls llama.cpp's C API through llama-cpp-python's ctypes bindings (quantizer
parameters, tensor-type overrides, importance-matrix entries, the evaluation callback) and reads
``ggml_tensor`` through its own ctypes copy of the struct (``app.engine.runner.GgmlTensor``). A
llama-cpp-python whose bindings or vendored ggml differ would fail in a child or, for the struct,
read the wrong bytes. ``problems()`` finds each such difference by name, so the Hardware page and
``quantdesk hw`` / ``--self-test`` say what does not match instead of a job crashing later.
The tested version is pinned in pyproject.toml.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TESTED_VERSION = "0.3.36"

FUNCTIONS = (
    "llama_backend_init", "llama_log_set", "llama_print_system_info",
    "llama_model_default_params", "llama_context_default_params", "llama_model_load_from_file",
    "llama_model_free", "llama_init_from_model", "llama_free", "llama_model_get_vocab",
    "llama_vocab_n_tokens", "llama_vocab_get_add_bos", "llama_vocab_bos", "llama_vocab_is_eog",
    "llama_tokenize", "llama_batch_init", "llama_batch_free", "llama_decode", "llama_get_logits",
    "llama_get_memory", "llama_memory_clear", "llama_model_quantize",
    "llama_model_quantize_default_params", "llama_supports_gpu_offload",
)
STRUCT_FIELDS = {
    "llama_model_quantize_params": ("ftype", "nthread", "allow_requantize", "pure", "dry_run",
                                    "output_tensor_type", "token_embedding_type", "imatrix",
                                    "tt_overrides"),
    "llama_model_tensor_override": ("pattern", "type"),
    "llama_model_imatrix_data": ("name", "data", "size"),
    "llama_model_params": ("n_gpu_layers", "progress_callback", "use_extra_bufts"),
    "llama_context_params": ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch",
                             "no_perf", "cb_eval"),
}
# llama_cpp._internals.LlamaModel methods the chat host calls on Llama._model
MODEL_METHODS = ("token_get_text", "token_bos", "token_eos", "n_ctx_train")
# Functions of libstdc++ itself (not templates a library instantiates for its own use): a
# library that defines one carries its own copy of the C++ runtime (``own_cxx_runtime``).
CXX_RUNTIME_SYMBOLS = (
    "_ZNSt6locale7classicEv",  # std::locale::classic()
    "_ZNKSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv",  # std::stringbuf::str()
    "_ZNSo9_M_insertIlEERSoT_",  # std::ostream::_M_insert<long>
    "_ZNSt11logic_errorC1EPKc",  # std::logic_error::logic_error(const char*)
)


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def tensor_layout_problem(struct: type[ctypes.Structure] | None = None) -> str | None:
    """Make a ggml tensor with known fields and read it through ``struct`` (the engine's
    ``GgmlTensor``): None when every field read lands where ggml wrote it, else what differs."""
    from app.engine import runner

    layout = struct or runner.GgmlTensor
    lib = runner.ggml_lib()
    try:
        init, new_2d = lib.ggml_init, lib.ggml_new_tensor_2d
        set_name, free = lib.ggml_set_name, lib.ggml_free
    except AttributeError as exc:
        return f"ggml lacks a function QuantDesk uses to check its tensors ({exc})"
    init.argtypes, init.restype = [_InitParams], ctypes.c_void_p
    new_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    new_2d.restype = ctypes.POINTER(layout)
    set_name.argtypes, set_name.restype = [ctypes.POINTER(layout), ctypes.c_char_p], None
    free.argtypes, free.restype = [ctypes.c_void_p], None
    ctx = init(_InitParams(1 << 16, None, False))
    if not ctx:
        return "ggml could not make a small context"
    try:
        tensor = new_2d(ctx, 0, 7, 3)  # GGML_TYPE_F32, 7 x 3
        set_name(tensor, b"quantdesk-probe")
        t: Any = tensor.contents
        seen = {"type": t.type, "ne": (t.ne[0], t.ne[1], t.ne[2], t.ne[3]),
                "nb": (t.nb[0], t.nb[1]), "op": t.op, "name": t.name,
                "data": bool(t.data), "view_src": bool(t.view_src)}
    finally:
        free(ctx)
    wanted = {"type": 0, "ne": (7, 3, 1, 1), "nb": (4, 28), "op": 0,
              "name": b"quantdesk-probe", "data": True, "view_src": False}
    wrong = [k for k in wanted if seen[k] != wanted[k]]
    if wrong:
        return (f"this llama.cpp's ggml_tensor is laid out differently from QuantDesk's copy "
                f"(fields {', '.join(wrong)} read wrong): importance matrices cannot be computed")
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def own_cxx_runtime(paths: Iterable[Path]) -> list[str]:
    """The names of those shared libraries in ``paths`` (loaded ones; others are skipped) that
    carry their own copy of libstdc++, linked in statically and exported (Linux only).

    A compiler set up to link libstdc++ statically (``-static-libstdc++``, or a toolchain with
    only ``libstdc++.a``) builds llama.cpp's libraries so. Each copy has its own locale and
    stream state, and which copy a call reaches depends on what the process loaded first: on
    a GPU machine whose compiler did this, every model load crashed in llama.cpp's
    ``print_info`` (its first ``std::stringstream``) once any other C++ library was loaded
    before libllama (sentencepiece, which the ``gguf`` package imports), and loaded fine
    without it.
    """
    if not sys.platform.startswith("linux"):
        return []
    dladdr = ctypes.CDLL(None).dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue  # not loaded in this process
        for name in CXX_RUNTIME_SYMBOLS:
            try:
                address = ctypes.cast(lib[name], ctypes.c_void_p).value
            except AttributeError:
                continue
            info = _DlInfo()
            # a lookup through the library's handle reaches libstdc++.so.6 when the library
            # needs it, and the library itself when it holds the definition
            if (dladdr(address, ctypes.byref(info)) and info.dli_fname
                    and os.path.realpath(os.fsdecode(info.dli_fname)) == os.path.realpath(path)):
                found.append(path.name)
                break
    return found


def cxx_runtime_problem(llama_cpp: Any) -> str | None:
    """A problem when llama.cpp's loaded libraries carry their own C++ runtime, else None."""
    folder = Path(llama_cpp.llama_cpp._lib._name).parent
    own = own_cxx_runtime(sorted(folder.glob("lib*.so*")))
    if not own:
        return None
    return (f"this llama.cpp build has the C++ runtime (libstdc++) linked into "
            f"{', '.join(own)}: a model load can crash when another C++ library was loaded "
            "first. Rebuild llama-cpp-python with a compiler that links libstdc++ as a shared "
            "library (README, 'Building llama.cpp for a GPU')")


def problems(llama_cpp: Any = None) -> list[str]:
    """Each difference from what the engine relies on, in words ([] when all is as tested)."""
    if llama_cpp is None:
        import llama_cpp
    found = []
    version = getattr(llama_cpp, "__version__", "unknown")
    missing = [name for name in FUNCTIONS if not hasattr(llama_cpp, name)]
    if missing:
        found.append(f"llama.cpp functions missing: {', '.join(missing)}")
    for struct, fields in STRUCT_FIELDS.items():
        kind = getattr(llama_cpp, struct, None)
        if kind is None:
            found.append(f"the struct {struct} is missing")
            continue
        present = {f[0] for f in getattr(kind, "_fields_", ())}
        absent = [f for f in fields if f not in present]
        if absent:
            found.append(f"{struct} lacks {', '.join(absent)}")
    internals = getattr(getattr(llama_cpp, "_internals", None), "LlamaModel", None)
    absent = [m for m in MODEL_METHODS if not hasattr(internals, m)]
    if absent:
        found.append(f"llama-cpp-python's model wrapper lacks {', '.join(absent)}")
    if not missing:
        layout = tensor_layout_problem()
        if layout:
            found.append(layout)
    runtime = cxx_runtime_problem(llama_cpp)
    if runtime:
        found.append(runtime)
    if found and version != TESTED_VERSION:
        found.insert(0, f"llama-cpp-python {version} is installed; QuantDesk is tested with "
                        f"{TESTED_VERSION} (pip install 'llama-cpp-python=={TESTED_VERSION}')")
    return found
