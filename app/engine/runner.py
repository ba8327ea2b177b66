"""Run a model over token chunks with llama.cpp's C API: the core of calibration and evaluation.

``llama_cpp.Llama`` is made for chat; measuring needs less and more: a context that sees whole
chunks in one batch with every position's logits, an optional evaluation callback (``cb_eval``,
which sees each graph node, for the importance matrix), and no Python per token. The batch's
token, position and output arrays are filled through numpy views of llama.cpp's own buffers, and
the logits are returned as a numpy view (valid until the next decode).

Run it in a child process: llama.cpp allocates and may abort in the caller.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np


class RunnerError(Exception):
    """The model could not be loaded or a chunk could not be evaluated."""


# ggml's tensor, as in ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
# GGML_MAX_NAME 64). The evaluation callback reads nodes through it.
class GgmlTensor(ctypes.Structure):
    pass


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * 10),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def default_threads() -> int:
    """One thread per physical core, as llama.cpp's own tools default to (llama-cpp-python's
    default, half the logical CPUs, leaves cores idle on machines without SMT)."""
    import psutil

    return psutil.cpu_count(logical=False) or 1


def count_chunks(n_tokens: int, n_ctx: int, max_chunks: int | None) -> int:
    """Whole chunks of ``n_ctx`` tokens in a text, at most ``max_chunks`` (the tail is dropped,
    as llama.cpp's perplexity and imatrix tools do)."""
    n = n_tokens // n_ctx
    return min(n, max_chunks) if max_chunks else n


def ggml_lib() -> Any:
    """libggml with the functions the evaluation callback uses."""
    from app.engine.devices import libggml

    lib = libggml()
    for name, argtypes, restype in (
        ("ggml_op_name", [ctypes.c_int], ctypes.c_char_p),
        ("ggml_backend_buffer_is_host", [ctypes.c_void_p], ctypes.c_bool),
        ("ggml_backend_tensor_get", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_size_t], None),
        ("ggml_nbytes", [ctypes.c_void_p], ctypes.c_size_t),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def op_id(lib: Any, name: bytes) -> int:
    """The enum value of a ggml op by its name ('MUL_MAT'), read from ggml itself."""
    for i in range(200):
        if lib.ggml_op_name(i) == name:
            return i
    raise RunnerError(f"this llama.cpp build has no ggml op {name.decode()}")


class Runner:
    """One model and one context of ``n_ctx`` tokens, evaluated a whole chunk at a time."""

    def __init__(self, model_path: Path | str, n_ctx: int, *, threads: int | None = None,
                 n_gpu_layers: int = 0, cb_eval: Any = None,
                 rpc_servers: tuple[str, ...] = ()) -> None:
        import llama_cpp

        from app.engine import llama_log, load_params

        llama_log.install()
        llama_cpp.llama_backend_init()
        self._ll = llama_cpp
        mparams = load_params.model_params(rpc_servers=rpc_servers)
        mparams.n_gpu_layers = n_gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            tail = " / ".join(llama_log.recent_lines(3))
            raise RunnerError(f"llama.cpp could not load {Path(model_path).name}: {tail}")
        self.threads = threads or default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        if cb_eval is not None:
            self._cb = cb_eval  # llama.cpp keeps the pointer: keep the object alive
            cparams.cb_eval = cb_eval
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RunnerError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = n_ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        b = self._batch
        self._tokens = np.ctypeslib.as_array(b.token, shape=(n_ctx,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(n_ctx,))
        self._n_seq = np.ctypeslib.as_array(b.n_seq_id, shape=(n_ctx,))
        self._logits = np.ctypeslib.as_array(
            ctypes.cast(b.logits, ctypes.POINTER(ctypes.c_int8)), shape=(n_ctx,))
        for i in range(n_ctx):  # once: every position belongs to sequence 0
            b.seq_id[i][0] = 0

    def tokenize(self, text: str, add_special: bool = True) -> np.ndarray:
        """The whole text's tokens (int32), with BOS when the model adds one."""
        raw = text.encode("utf-8")
        n = len(raw) + 16
        for _ in range(2):
            buf = (self._ll.llama_token * n)()
            got = self._ll.llama_tokenize(self.vocab, raw, len(raw), buf, n, add_special, False)
            if got >= 0:
                ids: np.ndarray = np.ctypeslib.as_array(buf)[:got].copy()
                return ids
            n = -got
        raise RunnerError("tokenization failed")

    def decode(self, tokens: np.ndarray, *, all_logits: bool = True, start: int = 0,
               clear: bool = True, outputs_from: int = 0) -> None:
        """Decode ``tokens`` at positions ``start``…; logits for the tokens from index
        ``outputs_from`` on (or only the last without ``all_logits``).

        Logits cost a vocabulary-wide matrix product per token (for a small model a fifth of
        the work): ask only for those that will be read."""
        n = len(tokens)
        if not 0 < n <= self.n_ctx:
            raise RunnerError(f"a batch must have 1 to {self.n_ctx} tokens, not {n}")
        ll = self._ll
        if clear:
            ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        self._tokens[:n] = tokens
        self._pos[:n] = np.arange(start, start + n, dtype=np.int32)
        self._n_seq[:n] = 1
        self._logits[:n] = 0
        self._logits[min(outputs_from, n - 1) if all_logits else n - 1:n] = 1
        self._batch.n_tokens = n
        status = ll.llama_decode(self.ctx, self._batch)
        if status != 0:
            raise RunnerError(f"llama.cpp could not evaluate the batch (status {status})")

    def generate_steps(self, token: int, n: int) -> None:
        """``n`` single-token decodes from an empty cache (llama-bench's tg test: the work of
        generation without sampling)."""
        one = np.array([token], dtype=np.int32)
        self.decode(one, all_logits=False)
        for pos in range(1, n):
            self.decode(one, all_logits=False, start=pos, clear=False)

    def eval_chunk(self, tokens: np.ndarray, first_bos: bool = True,
                   outputs_from: int = 0) -> np.ndarray:
        """Evaluate ``tokens`` (at most n_ctx) from an empty cache; return the logits of the
        tokens from index ``outputs_from`` on.

        With ``first_bos`` the first token is replaced by BOS when the model uses one, as
        llama.cpp's perplexity and imatrix tools do. The result is a (n - outputs_from,
        n_vocab) float32 view of llama.cpp's buffer, valid until the next call.
        """
        tokens = np.array(tokens, dtype=np.int32)
        if first_bos and self.add_bos:
            tokens[0] = self.bos
        outputs_from = min(outputs_from, len(tokens) - 1)
        self.decode(tokens, outputs_from=outputs_from)
        ptr = self._ll.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(tokens) - outputs_from, self.n_vocab))

    def close(self) -> None:
        ll = self._ll
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
