"""Importance matrix: which input columns of each weight matter, measured on a calibration text.

The method is llama.cpp's imatrix tool's: run the model over the text in chunks of ``n_ctx``
tokens (BOS first) and, for every matrix multiplication whose weight is a ``blk.*`` tensor,
accumulate the squares of the activations per input column (and how many rows were seen). The
quantizer then weighs each column's rounding error by the mean, ``in_sum2 / count``: columns that
carry large activations are quantized more carefully. Batches under 16 tokens are skipped, as
llama.cpp does.

The activations come from llama.cpp's evaluation callback (``cb_eval``): asked about each graph
node, it answers yes for those MUL_MATs, then reads the node's ``src[1]`` (the activations) when
computed. The per-node work is one vectorized numpy reduction; when several weights share one
input (attention Q/K/V, FFN gate/up) the reduction is done once per graph.

The result is saved in llama.cpp's GGUF imatrix format (``<weight>.in_sum2`` and
``<weight>.counts`` tensors, ``imatrix.*`` keys), readable by llama-quantize, and passed to the
quantizer through ``llama_model_quantize_params.imatrix``. Mixture-of-experts layers
(MUL_MAT_ID) are not collected yet: types that need an imatrix cannot be made for such models.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.child import child_errors, no_room, no_room_message, stream_from_child
from app.engine.events import Progress

MIN_BATCH = 16  # llama.cpp's imatrix tool ignores smaller batches


class ImatrixError(Exception):
    """The importance matrix could not be computed, read or used."""


class ImatrixCancelled(ImatrixError):
    """The user cancelled; nothing was written."""


@dataclass(frozen=True)
class Imatrix:
    """Accumulated statistics: per weight name, the sums of squares and the rows counted."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    chunks: int
    chunk_size: int
    datasets: tuple[str, ...] = ()

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer uses: mean squared activation per input column."""
        return {name: (s / self.counts[name]).astype(np.float32)
                for name, s in self.sums.items() if self.counts[name] > 0}


@dataclass(frozen=True)
class Computed:
    path: Path
    chunks: int
    tokens: int
    tensors: int
    seconds: float


class _Collector:
    """The cb_eval callback: accumulates squared activations of blk.* matrix multiplications."""

    def __init__(self) -> None:
        import llama_cpp

        from app.engine.runner import GgmlTensor, ggml_lib, op_id

        self.lib = ggml_lib()
        self.mul_mat = op_id(self.lib, b"MUL_MAT")
        self.tensor_ptr = ctypes.POINTER(GgmlTensor)
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self._last: tuple[int, np.ndarray, int] | None = None  # (src1 address, sums, rows)
        self._scratch = np.empty(0, dtype=np.uint8)
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def new_graph(self) -> None:
        """Forget the shared-input cache: node addresses are reused by the next graph."""
        self._last = None

    def _on_node(self, node_ptr: int, ask: bool, _user: int) -> bool:
        try:
            node = ctypes.cast(node_ptr, self.tensor_ptr).contents
            if node.op != self.mul_mat:
                return not ask  # asked: not interested; told (cannot happen): go on
            src0, src1 = node.src[0].contents, node.src[1].contents
            if ask:
                return bool(src1.ne[1] >= MIN_BATCH and src1.type == 0  # GGML_TYPE_F32
                            and src0.name.startswith(b"blk."))
            self._collect(src0.name.decode(), ctypes.addressof(src1), src1)
        except Exception:  # an exception must not unwind through C: stop the computation
            import logging

            logging.getLogger(__name__).exception("imatrix collection failed")
            return False
        return True

    def _collect(self, name: str, address: int, src1: Any) -> None:
        if name.count("#") >= 1:  # llama.cpp may decorate names: "…#blk.0.attn_q.weight#…"
            name = name.split("#")[1]
        if self._last is not None and self._last[0] == address:
            squares, rows = self._last[1], self._last[2]
        else:
            x = self._activations(src1)
            squares = np.einsum("ij,ij->j", x, x, dtype=np.float32).astype(np.float64)
            rows = x.shape[0]
            self._last = (address, squares, rows)
        acc = self.sums.get(name)
        if acc is None:
            self.sums[name] = squares.copy()
            self.counts[name] = rows
        else:
            acc += squares
            self.counts[name] += rows

    def _activations(self, t: Any) -> np.ndarray:
        """src1 as a (rows, columns) float32 array (copied from device memory when needed)."""
        ne0, rows = int(t.ne[0]), int(t.ne[1] * t.ne[2] * t.ne[3])
        if t.nb[1] != ne0 * 4 or t.nb[2] != t.nb[1] * t.ne[1] or t.nb[3] != t.nb[2] * t.ne[2]:
            raise ImatrixError(f"non-contiguous activations ({ne0}×{rows})")
        nbytes = ne0 * rows * 4
        if self.lib.ggml_backend_buffer_is_host(t.buffer):
            raw = (ctypes.c_float * (ne0 * rows)).from_address(t.data)
            return np.ctypeslib.as_array(raw).reshape(rows, ne0)
        if self._scratch.size < nbytes:
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        self.lib.ggml_backend_tensor_get(ctypes.addressof(t), self._scratch.ctypes.data, 0,
                                         nbytes)
        return self._scratch[:nbytes].view(np.float32).reshape(rows, ne0)


def _compute(send: Callable[[Any], None], model: str, text: str, n_ctx: int,
             max_chunks: int | None, threads: int | None, n_gpu_layers: int = 0,
             rpc_servers: tuple[str, ...] = ()) -> Imatrix:
    """In the child: run the model over the text and collect the statistics."""
    from app.engine.runner import Runner, count_chunks

    collector = _Collector()
    with Runner(model, n_ctx, threads=threads, cb_eval=collector.callback,
                n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers) as runner:
        tokens = runner.tokenize(text)
        n_chunks = count_chunks(len(tokens), n_ctx, max_chunks)
        if n_chunks < 1:
            raise ImatrixError(f"The calibration text has {len(tokens)} tokens; at least "
                               f"{n_ctx} (one chunk of the context size) are needed.")
        send(Progress(0, n_chunks, f"{len(tokens):,} tokens, {n_chunks} chunks of {n_ctx}"))
        for i in range(n_chunks):
            collector.new_graph()
            # Logits for every token, as llama-imatrix asks: with fewer, llama.cpp drops the
            # other rows inside the last layer and its statistics would change.
            runner.eval_chunk(tokens[i * n_ctx:(i + 1) * n_ctx])
            send(Progress(i + 1, n_chunks, f"chunk {i + 1}/{n_chunks}"))
    if not collector.sums:
        raise ImatrixError("No matrix multiplication was seen: is this a supported model?")
    return Imatrix(collector.sums, collector.counts, n_chunks, n_ctx)


def save(imatrix: Imatrix, path: Path) -> None:
    """Write llama.cpp's GGUF imatrix format, atomically."""
    import gguf

    tmp = path.with_name(f".{path.name}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(str(tmp), arch="imatrix")
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", list(imatrix.datasets) or ["unknown"])
        writer.add_uint32("imatrix.chunk_count", imatrix.chunks)
        writer.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
        for name in sorted(imatrix.sums):
            writer.add_tensor(f"{name}.in_sum2",
                              imatrix.sums[name].astype(np.float32).reshape(1, -1))
            writer.add_tensor(f"{name}.counts",
                              np.array([[imatrix.counts[name]]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    except OSError as exc:
        # numpy's tofile reports a failed write without its errno: ask the system again
        room = no_room(tmp, exc)
        if room is not None and room.errno is not None:
            raise ImatrixError("The importance matrix could not be written: "
                               + no_room_message(room.errno, path)) from None
        raise ImatrixError(f"The importance matrix could not be written to {path}: "
                           f"{exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load(path: Path) -> Imatrix:
    """Read a GGUF imatrix (ours or llama-imatrix's)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ImatrixError(f"{Path(path).name} is not a GGUF imatrix: {exc}") from None
    field = reader.get_field("general.type")
    if field is None or field.contents() != "imatrix":
        raise ImatrixError(f"{Path(path).name} is a GGUF file but not an importance matrix.")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = np.array(t.data, dtype=np.float64).ravel()
        elif t.name.endswith(".counts"):
            data = np.array(t.data).ravel()
            if len(data) != 1:
                raise ImatrixError(f"{t.name}: per-expert counts (mixture-of-experts) are not "
                                   "supported yet.")
            counts[t.name.removesuffix(".counts")] = int(data[0])

    def value(key: str) -> Any:
        f = reader.get_field(key)
        return f.contents() if f is not None else None

    missing = set(sums) ^ set(counts)
    if missing:
        raise ImatrixError(f"{Path(path).name} is incomplete (no sums or counts for "
                           f"{sorted(missing)[0]}).")
    return Imatrix(sums, counts, int(value("imatrix.chunk_count") or 0),
                   int(value("imatrix.chunk_size") or 0),
                   tuple(value("imatrix.datasets") or ()))


def compute(model: Path, text: str, out: Path, *, n_ctx: int = 512,
            max_chunks: int | None = None, threads: int | None = None, dataset: str = "",
            cancel: Callable[[], bool] | None = None, n_gpu_layers: int = 0,
            rpc_servers: tuple[str, ...] = ()) -> Iterator[Progress | Computed]:
    """Compute an importance matrix for ``model`` from ``text`` and save it to ``out``
    (``n_gpu_layers`` offloaded, over the devices of ``rpc_servers`` too when given)."""
    start = time.perf_counter()
    stream = stream_from_child(_compute, str(model), text, n_ctx, max_chunks, threads,
                               n_gpu_layers, tuple(rpc_servers), cancel=cancel)
    with child_errors(ImatrixError, ImatrixCancelled,
                      cancelled_message="Cancelled; no importance matrix was written.",
                      crashed="llama.cpp stopped unexpectedly",
                      strip=("ImatrixError: ", "RunnerError: ", "RpcError: ")):
        result: Imatrix = yield from stream
    if dataset:
        result = Imatrix(result.sums, result.counts, result.chunks, result.chunk_size,
                         (dataset,))
    save(result, out)
    yield Computed(out, result.chunks, result.chunks * n_ctx, len(result.sums),
                   time.perf_counter() - start)


class NativeImatrix:
    """The means as ``llama_model_imatrix_data`` entries (NULL-terminated) for the quantizer."""

    def __init__(self, imatrix: Imatrix) -> None:
        import llama_cpp

        means = imatrix.means()
        self._keep: list[Any] = []
        entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
        for i, (name, values) in enumerate(sorted(means.items())):
            encoded = name.encode()
            arr = np.ascontiguousarray(values, dtype=np.float32)
            self._keep += [encoded, arr]
            entries[i].name = encoded
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(means)].name = None
        self._keep.append(entries)
        self.pointer = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
