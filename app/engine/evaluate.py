"""Evaluate quantizations against a reference: size, memory, speed and quality, like llama.cpp.

Quality follows llama.cpp's perplexity tool: the text is tokenized once, cut into
non-overlapping chunks of ``n_ctx`` tokens, BOS put first (when the model uses one), and the
second half of each chunk scored: the logits at position j predict token j+1, for j from n_ctx/2
to n_ctx-2. Perplexity is exp(mean negative log-likelihood) with llama.cpp's ± (standard error of
the mean times PPL).

Against the reference, per scored position: the KL divergence KL(P_ref || P_cand), whether the
top token agrees, and the change in the probability of the correct token (reported as RMS).

The reference's distributions are computed once per (reference file, text, n_ctx, chunks, build)
and cached on disk in a compact, vocabulary-independent form: per position the K most probable
tokens with their log-probabilities, and S tokens drawn from the rest by systematic sampling
(equal shares of the remaining probability mass, one random offset), with that mass. The KL
divergence is then the exact sum over the top K plus an unbiased estimate of the tail's share.
With K = S = 128 this is 1.5 KB per scored token whatever the vocabulary; on SmolLM2 (49k
vocabulary) the estimate's mean, median and 99th percentile were within 0.3%, 1.6% and 1.1% of
the exact values computed from full distributions (bench/quality.py compares with
llama-perplexity). The cache is written chunk by chunk into memory-mapped arrays, so memory
stays at one chunk's logits however long the text.

All per-token work is llama.cpp's or vectorized numpy over whole chunks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from app.core.atomic import NO_ROOM_ERRNOS
from app.engine.child import (
    ChildCancelled,
    ChildCrashed,
    ChildFailed,
    child_errors,
    stream_from_child,
)
from app.engine.events import Progress

TOP_K = 128
TAIL_SAMPLES = 128
CACHE_FORMAT = 2  # 2: tail sampled from float32 probabilities
CACHE_LIMIT_BYTES = 4 * 2**30  # oldest reference caches are removed beyond this
_BLOCK_ROWS = 64  # rows per vectorized block in the reference pass (bounds the scratch)


class EvalError(Exception):
    """The evaluation could not run; the message says why."""


class EvalCancelled(EvalError):
    pass


@dataclass(frozen=True)
class Speed:
    """llama-bench's two numbers: prompt processing of 512 tokens and generation of 128."""

    pp_tokens_per_s: float
    tg_tokens_per_s: float
    pp_tokens: int = 512
    tg_tokens: int = 128
    repetitions: int = 3


@dataclass(frozen=True)
class Quality:
    ppl: float
    ppl_error: float
    kld_mean: float | None = None
    kld_error: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    same_top: float | None = None  # share of positions whose top token agrees with the reference
    rms_dp: float | None = None  # RMS of the change in probability of the correct token
    tokens_scored: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class VariantResult:
    """One model file's numbers."""

    path: str
    name: str
    quant: str
    size: int
    bits_per_weight: float
    fingerprint: str
    load_seconds: float
    peak_rss: int
    quality: Quality
    speed: Speed | None
    is_reference: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> VariantResult:
        quality = Quality(**data["quality"])
        speed = Speed(**data["speed"]) if data.get("speed") else None
        return VariantResult(**{**data, "quality": quality, "speed": speed})


@dataclass(frozen=True)
class Evaluation:
    """Everything needed to read, compare and reproduce one evaluation."""

    reference: VariantResult
    candidates: tuple[VariantResult, ...]
    text_name: str
    text_sha256: str
    n_ctx: int
    chunks: int
    build: str
    created: float = field(default_factory=time.time)

    @property
    def variants(self) -> tuple[VariantResult, ...]:
        return (self.reference, *self.candidates)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reference"] = self.reference.to_json()
        data["candidates"] = [c.to_json() for c in self.candidates]
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Evaluation:
        return Evaluation(
            reference=VariantResult.from_json(data["reference"]),
            candidates=tuple(VariantResult.from_json(c) for c in data["candidates"]),
            text_name=data["text_name"], text_sha256=data["text_sha256"],
            n_ctx=data["n_ctx"], chunks=data["chunks"], build=data["build"],
            created=data.get("created", 0.0))


def fingerprint(path: Path) -> str:
    """A quick identity for a (possibly huge) model file: SHA-256 of its size, its first 8 MiB
    (the GGUF header: every key and tensor description) and its last 8 MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    piece = 8 * 2**20
    with path.open("rb") as f:
        h.update(f.read(piece))
        if size > 2 * piece:
            f.seek(size - piece)
            h.update(f.read(piece))
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def llama_build() -> str:
    from importlib import metadata

    try:
        return f"llama-cpp-python {metadata.version('llama-cpp-python')}"
    except metadata.PackageNotFoundError:
        return "llama-cpp-python unknown"


# ---------------------------------------------------------------------------- numpy kernels

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (one temporary of the input's size)."""
    out: np.ndarray = logits - logits.max(axis=1, keepdims=True)
    # float32 sums: numpy sums a row pairwise, so the error stays ~1e-7 relative (3x faster
    # than summing in float64, which converts every element)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def top_k(lp: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values (in no particular order).

    A value partition finds each row's k-th largest value and a comparison picks the columns
    (3x faster than ``argpartition``, which writes an int64 index for every element); rows
    with ties at that value, where more than k columns qualify, fall back to argpartition.
    """
    rows, vocab = lp.shape
    threshold = np.partition(lp, vocab - k, axis=1)[:, vocab - k]
    hit_rows, hit_cols = np.nonzero(lp >= threshold[:, None])
    counts = np.bincount(hit_rows, minlength=rows)
    if np.all(counts == k):
        return hit_cols.reshape(rows, k)
    out = np.empty((rows, k), dtype=np.int64)
    plain = counts == k
    out[plain] = hit_cols[np.repeat(plain, counts)].reshape(-1, k)
    tied = np.flatnonzero(~plain)
    out[tied] = np.argpartition(-lp[tied], k - 1, axis=1)[:, :k]
    return out


def compress_reference(lp: np.ndarray, rng: np.random.Generator | np.ndarray, k: int = TOP_K,
                       s: int = TAIL_SAMPLES) -> dict[str, np.ndarray]:
    """Top-k tokens and s systematic samples of the rest, for rows of log-probabilities.
    ``rng``: the generator, or the rows' sample offsets already drawn from it (``offsets``),
    so rows compressed in parts give what they give together."""
    rows, vocab = lp.shape
    offsets = rng if isinstance(rng, np.ndarray) else sample_offsets(rng, rows)
    k = min(k, vocab)
    top = top_k(lp, k)
    top_lp = np.take_along_axis(lp, top, 1)
    order = np.argsort(-top_lp, axis=1)
    top, top_lp = np.take_along_axis(top, order, 1), np.take_along_axis(top_lp, order, 1)
    tail_ids = np.zeros((rows, s), dtype=np.int32)
    tail_lp = np.zeros((rows, s), dtype=np.float32)
    tail_mass = np.zeros(rows, dtype=np.float32)
    if vocab > k:
        for start in range(0, rows, _BLOCK_ROWS):  # blocks of rows, not a loop over tokens
            block = slice(start, min(start + _BLOCK_ROWS, rows))
            p = np.exp(lp[block])
            np.put_along_axis(p, top[block], 0.0, axis=1)
            # the tail's mass from numpy's pairwise sum (float32, ~1e-7 relative); the samples'
            # positions from a float32 running sum, spread over that sum's own total, so its
            # rounding (~1e-5 relative) moves a sample only across a token boundary that close
            mass = p.sum(axis=1)
            cum = np.cumsum(p, axis=1)
            n = cum.shape[0]
            targets = (np.arange(s)[None, :] + offsets[block]) / s * cum[:, -1:]
            idx = np.empty((n, s), dtype=np.int64)
            for r in range(n):  # a search per row: s lookups in a sorted row, microseconds
                idx[r] = np.searchsorted(cum[r], targets[r], side="right")
            np.minimum(idx, vocab - 1, out=idx)
            tail_ids[block] = idx
            tail_lp[block] = np.take_along_axis(lp[block], idx, 1)
            tail_mass[block] = mass
    return {"top_ids": top.astype(np.int32), "top_lp": top_lp.astype(np.float16),
            "tail_ids": tail_ids, "tail_lp": tail_lp.astype(np.float16), "tail_mass": tail_mass}


def sample_offsets(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Each row's offset for the tail's systematic samples (``compress_reference``)."""
    return rng.random((rows, 1))


def compare_rows(lq: np.ndarray, ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row KLD, top-token agreement and candidate log-prob of the reference's top tokens."""
    top_lp = ref["top_lp"].astype(np.float32)
    kld_top = (np.exp(top_lp) * (top_lp - np.take_along_axis(lq, ref["top_ids"], 1))).sum(1)
    tail_lp = ref["tail_lp"].astype(np.float32)
    tail = (tail_lp - np.take_along_axis(lq, ref["tail_ids"], 1)).mean(1) * ref["tail_mass"]
    return {"kld": kld_top + tail, "same_top": lq.argmax(1) == ref["top_ids"][:, 0]}


# ---------------------------------------------------------------------------- child side

def _scored(n_ctx: int) -> tuple[int, int]:
    first = n_ctx // 2
    return first, n_ctx - 1 - first


def _measure_speed(runner: Any, repetitions: int) -> Speed:
    rng = np.random.default_rng(0)
    pp, tg = [], []
    tokens = rng.integers(0, runner.n_vocab, size=512).astype(np.int32)
    runner.decode(tokens[:16])  # warm-up, as llama-bench does
    for _ in range(repetitions):
        t = time.perf_counter()
        runner.decode(tokens, all_logits=False)
        pp.append(512 / (time.perf_counter() - t))
        t = time.perf_counter()
        runner.generate_steps(int(tokens[0]), 128)
        tg.append(128 / (time.perf_counter() - t))
    return Speed(float(np.median(pp)), float(np.median(tg)), repetitions=repetitions)


def _speed_only(model: str, reps: int, threads: int | None, n_gpu_layers: int = 0,
                rpc_servers: tuple[str, ...] = ()) -> Speed:
    from app.engine.runner import Runner

    with Runner(model, 512, threads=threads, n_gpu_layers=n_gpu_layers,
                rpc_servers=rpc_servers) as runner:
        return _measure_speed(runner, reps)


def measure_speed(model: Path, reps: int = 3, threads: int | None = None, *,
                  n_gpu_layers: int = 0, rpc_servers: tuple[str, ...] = ()) -> Speed:
    """pp512 and tg128 of one model, in a child process (as llama-bench measures them);
    ``n_gpu_layers`` offloaded, split over the RPC servers' devices with ``rpc_servers``."""
    from app.engine.child import call_in_child

    try:
        return call_in_child(_speed_only, str(model), reps, threads, n_gpu_layers,
                             tuple(rpc_servers), timeout=3600)
    except ChildFailed as exc:
        raise EvalError(str(exc).removeprefix("RunnerError: ").removeprefix("RpcError: ")
                        ) from None
    except ChildCrashed as exc:
        raise EvalError(f"llama.cpp stopped unexpectedly: {exc}.") from None


def _run_variant(send: Callable[[Any], None], model: str, text: str, n_ctx: int,
                 max_chunks: int | None, cache: str, reference: bool, speed_reps: int,
                 threads: int | None, n_gpu_layers: int = 0,
                 rpc_servers: tuple[str, ...] = ()) -> dict[str, Any]:
    """In the child: load, score the text (writing or reading the reference cache), time."""
    from app.engine import process_stats
    from app.engine.runner import Runner, count_chunks

    start = time.perf_counter()
    runner = Runner(model, n_ctx, threads=threads, n_gpu_layers=n_gpu_layers,
                    rpc_servers=rpc_servers)
    load_seconds = time.perf_counter() - start
    with runner:
        tokens = runner.tokenize(text)
        n_chunks = count_chunks(len(tokens), n_ctx, max_chunks)
        if n_chunks < 1:
            raise EvalError(f"The text has {len(tokens)} tokens; at least {n_ctx} (one chunk) "
                            "are needed.")
        first, n_scored = _scored(n_ctx)
        total = n_chunks * n_scored
        cache_dir = Path(cache)
        if reference:
            arrays = _open_cache(cache_dir, total, "w+")
            # seeded by the cache's name (what it caches), not its path: the same evaluation in
            # another data folder samples the same tail tokens and gives the same numbers
            rng = np.random.default_rng(int(hashlib.sha256(cache_dir.name.encode()).hexdigest()[:8],
                                            16))
        else:
            arrays = _open_cache(cache_dir, total, "r")
            if arrays["vocab"][0] != runner.n_vocab:
                raise EvalError("The candidate's vocabulary differs from the reference's: they "
                                "are not variants of the same model.")
        nll = np.empty(total, dtype=np.float64)
        kld = np.empty(total, dtype=np.float64)
        same = np.empty(total, dtype=bool)
        dp = np.empty(total, dtype=np.float64)
        send(Progress(0, n_chunks, f"{len(tokens):,} tokens, {n_chunks} chunks of {n_ctx}"))
        t0 = time.perf_counter()
        # a chunk's rows are scored in parts on the cores llama.cpp's threads leave idle between
        # two decodes (numpy releases the GIL), as llama-perplexity scores on worker threads
        parts = _row_parts(n_scored, _score_workers(threads))
        pool = ThreadPoolExecutor(len(parts)) if len(parts) > 1 else None

        def in_parts(score: Callable[[slice], None]) -> None:
            if pool is None:
                score(parts[0])
            else:
                list(pool.map(score, parts))

        try:
            for c in range(n_chunks):
                chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
                # logits only where they are scored (llama-perplexity asks for the same ones)
                logits = runner.eval_chunk(chunk, outputs_from=first)
                base = c * n_scored
                nxt = chunk[first + 1:]
                if reference:
                    score = partial(_score_reference, logits=logits, nxt=nxt, base=base,
                                    offsets=sample_offsets(rng, n_scored), nll=nll,
                                    arrays=arrays)
                else:
                    if not np.array_equal(arrays["next"][base:base + n_scored], nxt):
                        raise EvalError("The candidate tokenizes the text differently from the "
                                        "reference: they are not variants of the same model.")
                    score = partial(_score_candidate, logits=logits, nxt=nxt, base=base,
                                    nll=nll, arrays=arrays, kld=kld, same=same, dp=dp)
                in_parts(score)
                if reference:
                    rows = slice(base, base + n_scored)
                    arrays["nll"][rows] = nll[rows]
                    arrays["next"][rows] = nxt
                send(Progress(c + 1, n_chunks, f"chunk {c + 1}/{n_chunks}"))
        finally:
            if pool is not None:
                pool.shutdown()
        seconds = time.perf_counter() - t0
        if reference:
            arrays["vocab"][0] = runner.n_vocab
            for a in arrays.values():
                a.flush()
    if speed_reps:
        send(Progress(n_chunks, n_chunks, "measuring speed (pp512, tg128)"))
    speed = _speed_only(model, speed_reps, threads) if speed_reps else None
    result: dict[str, Any] = {"nll": nll, "chunks": n_chunks, "seconds": seconds,
                              "load_seconds": load_seconds, "speed": speed,
                              "peak_rss": process_stats.peak_rss_bytes()}
    if not reference:
        result.update(kld=kld, same=same, dp=dp)
    return result


def _score_reference(part: slice, *, logits: np.ndarray, nxt: np.ndarray, base: int,
                     offsets: np.ndarray, nll: np.ndarray, arrays: dict[str, Any]) -> None:
    """Rows ``part`` of a chunk of the reference pass: their NLL and compressed
    distributions, written at ``base`` + the rows."""
    lq = log_softmax(logits[part])
    rows = slice(base + part.start, base + part.stop)
    nll[rows] = -np.take_along_axis(lq, nxt[part, None].astype(np.int64), 1)[:, 0]
    for key, value in compress_reference(lq, offsets[part]).items():
        arrays[key][rows] = value


def _score_candidate(part: slice, *, logits: np.ndarray, nxt: np.ndarray, base: int,
                     nll: np.ndarray, arrays: dict[str, Any], kld: np.ndarray,
                     same: np.ndarray, dp: np.ndarray) -> None:
    """Rows ``part`` of a chunk of a candidate's pass, against the reference's cache."""
    lq = log_softmax(logits[part])
    rows = slice(base + part.start, base + part.stop)
    nll[rows] = -np.take_along_axis(lq, nxt[part, None].astype(np.int64), 1)[:, 0]
    ref = {key: np.asarray(arrays[key][rows]) for key in
           ("top_ids", "top_lp", "tail_ids", "tail_lp", "tail_mass")}
    cmp = compare_rows(lq, ref)
    kld[rows], same[rows] = cmp["kld"], cmp["same_top"]
    dp[rows] = np.exp(-nll[rows]) - np.exp(-arrays["nll"][rows].astype(np.float64))


def _score_workers(threads: int | None) -> int:
    """Threads that score a chunk: as many as llama.cpp decodes with, at most 4 (the parts are
    memory-bound numpy work; more threads stop paying)."""
    from app.engine.runner import default_threads

    return max(1, min(4, threads or default_threads()))


def _row_parts(rows: int, n: int) -> list[slice]:
    """``rows`` split into ``n`` contiguous parts (fewer when there are few rows)."""
    n = max(1, min(n, rows // 32 or 1))
    edges = [rows * i // n for i in range(n + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def _open_cache(folder: Path, total: int, mode: str) -> dict[str, Any]:
    from numpy.lib.format import open_memmap

    shapes = {"top_ids": ((total, TOP_K), np.int32), "top_lp": ((total, TOP_K), np.float16),
              "tail_ids": ((total, TAIL_SAMPLES), np.int32),
              "tail_lp": ((total, TAIL_SAMPLES), np.float16),
              "tail_mass": ((total,), np.float32), "nll": ((total,), np.float32),
              "next": ((total,), np.int32), "vocab": ((1,), np.int64)}
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, (shape, dtype) in shapes.items():
        path = folder / f"{name}.npy"
        if mode == "r":
            arr = np.load(path, mmap_mode="r")
            if arr.shape != shape:
                raise EvalError("The cached reference does not match this evaluation; it will "
                                "be rebuilt on the next run.")
        else:
            try:
                arr = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                _reserve(path)
            except OSError as exc:
                if exc.errno not in NO_ROOM_ERRNOS:
                    raise
                raise EvalError(_no_room_for_cache(exc.errno, folder, total)) from None
        arrays[name] = arr
    return arrays


def _reserve(path: Path) -> None:
    """Allocate the whole of a new cache file now. The cache is written through memory maps,
    and a mapped page the disk has no room for kills the process (SIGBUS) part-way through the
    pass; reserved first, a full disk is an OSError here, before any work."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:  # not on macOS or Windows: there the risk remains
        return
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in NO_ROOM_ERRNOS:
            raise
        # a file system that cannot reserve: write through the map as before
    finally:
        os.close(fd)


def _no_room_for_cache(err: int, folder: Path, total: int) -> str:
    per_token = TOP_K * (4 + 2) + TAIL_SAMPLES * (4 + 2) + 4 + 4 + 4
    return (f"The reference's token distributions ({total * per_token / 2**20:.0f} MiB) cannot "
            f"be stored in {folder.parent} ({os.strerror(err)}). Free some space on that disk, "
            "or evaluate a shorter text (fewer chunks), then try again.")


# ---------------------------------------------------------------------------- parent side

def _stats(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    mean = float(values.mean())
    err = float(values.std(ddof=0) / math.sqrt(n - 1)) if n > 10 else 0.0
    return mean, err


def _quality(out: dict[str, Any]) -> Quality:
    nll = out["nll"]
    mean, err = _stats(nll)
    ppl = math.exp(mean)
    q = Quality(ppl=ppl, ppl_error=err * ppl, tokens_scored=len(nll), seconds=out["seconds"])
    if "kld" in out:
        kld = out["kld"]
        kmean, kerr = _stats(kld)
        q = Quality(ppl=ppl, ppl_error=err * ppl, kld_mean=kmean, kld_error=kerr,
                    kld_median=float(np.median(kld)), kld_p99=float(np.percentile(kld, 99)),
                    kld_max=float(kld.max()), same_top=float(out["same"].mean()),
                    rms_dp=float(np.sqrt((out["dp"] ** 2).mean())), tokens_scored=len(nll),
                    seconds=out["seconds"])
    return q


def reference_cache_dir(ref: Path, text: str, n_ctx: int, max_chunks: int | None) -> Path:
    from app.core.paths import cache_dir

    key = json.dumps([CACHE_FORMAT, fingerprint(ref), text_sha256(text), n_ctx, max_chunks,
                      TOP_K, TAIL_SAMPLES, llama_build()])
    return cache_dir() / "reference" / hashlib.sha256(key.encode()).hexdigest()[:24]


def _prune_cache(keep: Path) -> None:
    root = keep.parent
    entries = sorted((p for p in root.iterdir() if p.is_dir() and p != keep),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    used = sum(f.stat().st_size for f in keep.glob("*"))
    for entry in entries:
        size = sum(f.stat().st_size for f in entry.glob("*"))
        if used + size > CACHE_LIMIT_BYTES:
            shutil.rmtree(entry, ignore_errors=True)
        else:
            used += size


def _variant(path: Path, out: dict[str, Any], reference: bool) -> VariantResult:
    from app.core.gguf_info import read_model_info

    info = read_model_info(path)
    return VariantResult(
        path=str(path), name=path.stem, quant=info.file_type or "?", size=info.file_size,
        # the tensors' bits, as llama.cpp's BPW and the Models page and wizard count them (the
        # file's metadata and vocabulary left out)
        bits_per_weight=info.bits_per_weight, fingerprint=fingerprint(path),
        load_seconds=out["load_seconds"], peak_rss=out["peak_rss"], quality=_quality(out),
        speed=out["speed"], is_reference=reference)


@dataclass(frozen=True)
class VariantDone:
    """One variant finished (the reference first)."""

    result: VariantResult
    from_cache: bool = False


def _check_readable(*paths: Path) -> None:
    from app.core.gguf_info import GGUFError, read_model_info

    for path in paths:
        try:
            read_model_info(Path(path))
        except GGUFError as exc:
            raise EvalError(str(exc)) from None


def reference_pass(reference: Path, text: str, *, n_ctx: int = 512,
                   max_chunks: int | None = None, speed_reps: int = 3,
                   threads: int | None = None, cancel: Callable[[], bool] | None = None,
                   n_gpu_layers: int = 0, rpc_servers: tuple[str, ...] = ()
                   ) -> Generator[Progress, None, tuple[VariantResult, bool]]:
    """Score the reference and cache its distributions (or find them cached); yields Progress,
    returns (its result, whether it came from the cache). ``n_gpu_layers`` are offloaded,
    over the devices of ``rpc_servers`` too when given (a plan's ``rpc_servers``)."""
    reference = Path(reference)
    _check_readable(reference)
    cache = reference_cache_dir(reference, text, n_ctx, max_chunks)
    cached = (cache / "meta.json").exists()  # written last, when the reference pass succeeded
    if cached:
        # the reference's own numbers come from the cache: scoring it again is not needed
        out = _reference_from_cache(cache)
    else:
        shutil.rmtree(cache, ignore_errors=True)
        out = yield from _drive(reference, text, n_ctx, max_chunks, cache, True, speed_reps,
                                threads, cancel, n_gpu_layers, tuple(rpc_servers))
    os.utime(cache)
    _prune_cache(cache)
    return _variant(reference, out, True), cached


def candidate_pass(reference: Path, candidate: Path, text: str, *, n_ctx: int = 512,
                   max_chunks: int | None = None, speed_reps: int = 3,
                   threads: int | None = None, cancel: Callable[[], bool] | None = None,
                   n_gpu_layers: int = 0, rpc_servers: tuple[str, ...] = ()
                   ) -> Generator[Progress, None, VariantResult]:
    """Score one candidate against the reference's cached distributions (computing them first
    when they are not cached); yields Progress, returns the candidate's result."""
    reference, candidate = Path(reference), Path(candidate)
    _check_readable(candidate)
    cache = reference_cache_dir(reference, text, n_ctx, max_chunks)
    if not (cache / "meta.json").exists():
        yield from reference_pass(reference, text, n_ctx=n_ctx, max_chunks=max_chunks,
                                  speed_reps=speed_reps, threads=threads, cancel=cancel,
                                  n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers)
    out = yield from _drive(candidate, text, n_ctx, max_chunks, cache, False, speed_reps,
                            threads, cancel, n_gpu_layers, tuple(rpc_servers))
    return _variant(candidate, out, False)


def assemble(reference: VariantResult, candidates: Sequence[VariantResult], text: str, *,
             text_name: str, n_ctx: int) -> Evaluation:
    """The Evaluation of a reference and its candidates, all scored on ``text`` at ``n_ctx``."""
    chunks = reference.quality.tokens_scored // _scored(n_ctx)[1]
    return Evaluation(reference, tuple(candidates), text_name, text_sha256(text), n_ctx, chunks,
                      llama_build())


def evaluate(reference: Path, candidates: Sequence[Path], text: str, *, text_name: str = "",
             n_ctx: int = 512, max_chunks: int | None = None, speed_reps: int = 3,
             threads: int | None = None, cancel: Callable[[], bool] | None = None,
             n_gpu_layers: int = 0, rpc_servers: tuple[str, ...] = ()
             ) -> Iterator[Progress | VariantDone | Evaluation]:
    """Evaluate each candidate against the reference; yields Progress (prefixed with the file
    name), VariantDone per file, then the Evaluation."""
    _check_readable(Path(reference), *(Path(c) for c in candidates))
    options: dict[str, Any] = {"n_ctx": n_ctx, "max_chunks": max_chunks,
                               "speed_reps": speed_reps, "threads": threads, "cancel": cancel,
                               "n_gpu_layers": n_gpu_layers, "rpc_servers": rpc_servers}
    ref, cached = yield from reference_pass(Path(reference), text, **options)
    yield VariantDone(ref, from_cache=cached)
    results = []
    for path in candidates:
        result = yield from candidate_pass(Path(reference), Path(path), text, **options)
        results.append(result)
        yield VariantDone(result)
    yield assemble(ref, results, text, text_name=text_name, n_ctx=n_ctx)


def _reference_from_cache(cache: Path) -> dict[str, Any]:
    meta = json.loads((cache / "meta.json").read_text())
    nll = np.load(cache / "nll.npy", mmap_mode="r").astype(np.float64)
    return {"nll": nll, "chunks": meta["chunks"], "seconds": meta["seconds"],
            "load_seconds": meta["load_seconds"], "peak_rss": meta["peak_rss"],
            "speed": Speed(**meta["speed"]) if meta.get("speed") else None}


def _drive(path: Path, text: str, n_ctx: int, max_chunks: int | None, cache: Path,
           reference: bool, speed_reps: int, threads: int | None,
           cancel: Callable[[], bool] | None, n_gpu_layers: int = 0,
           rpc_servers: tuple[str, ...] = ()) -> Generator[Progress, None, dict[str, Any]]:
    stream = stream_from_child(_run_variant, str(path), text, n_ctx, max_chunks, str(cache),
                               reference, speed_reps, threads, n_gpu_layers, rpc_servers,
                               cancel=cancel)
    with child_errors(EvalError, EvalCancelled, cancelled_message="Evaluation cancelled.",
                      crashed=f"llama.cpp stopped unexpectedly while evaluating {path.name}",
                      strip=("EvalError: ", "RunnerError: ", "RpcError: ")):
        try:
            while True:
                try:
                    event = next(stream)
                except StopIteration as stop:
                    out: dict[str, Any] = stop.value
                    break
                yield Progress(event.done, event.total, f"{path.name}: {event.message}")
        except (ChildCancelled, ChildCrashed, ChildFailed):
            # A half-written reference cache must not be read later (meta.json, written last,
            # marks a whole one), and must not keep its disk space: it may be why it failed.
            if reference:
                shutil.rmtree(cache, ignore_errors=True)
            raise
    if reference:
        speed = out["speed"]
        from app.core.atomic import write_text_atomic

        try:
            write_text_atomic(cache / "meta.json", json.dumps({
                "chunks": out["chunks"], "seconds": out["seconds"],
                "load_seconds": out["load_seconds"], "peak_rss": out["peak_rss"],
                "speed": asdict(speed) if speed else None, "reference": str(path)}))
        except OSError as exc:
            shutil.rmtree(cache, ignore_errors=True)
            if exc.errno not in NO_ROOM_ERRNOS:
                raise EvalError(f"The reference's results could not be stored in "
                                f"{cache.parent}: {exc.strerror or exc}.") from None
            raise EvalError(_no_room_for_cache(exc.errno, cache, len(out["nll"]))) from None
    return out
