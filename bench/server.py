"""Server benchmark: tokens/s through the OpenAI API against the in-app engine, and 1/4/16
concurrent streaming clients (aggregate tokens/s, p50/p99 time to first token).

    python -m bench.server [MODEL] [--threads N] [--tokens 128] [--reps 3] [--parallel 1,4]

Same model, same threads, greedy, ``ignore_eos`` so every reply has the same length. The
in-app figure is measured the way the Chat page sees it: Token events through ``ModelHost``,
first to last. The API figure is measured by an ``openai`` client reading the stream, first
chunk to last. Concurrent clients share one engine: with ``--parallel 1`` they take turns (fair
queue), so aggregate tokens/s stays near the single-client rate and time to first token grows
with the queue; with more, that many replies are generated together in one batched decode per
token. Baseline for that: llama.cpp's ``llama-batched-bench`` (same model, threads and batch
sizes, flash attention as the engine sets it), whose generation rate at B parallel sequences
is what llama.cpp itself gets from batching (QUANTDESK_LLAMA_TOOLS, see bench/_llama_tools.py).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._llama_tools import engine_flash_attn, tool

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
_CLIENTS = threading.local()


def _stream_rate(times: list[float], tokens: int) -> float:
    """Tokens after the first over the time from the first text to the last. Counted from the
    reply's own figure: a busy reader gets several tokens per event (app/engine/host_child)."""
    return (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def in_app(model: Path, threads: int, tokens: int, reps: int) -> float:
    from app.engine.host import ModelHost
    from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling, Token

    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(model), n_ctx=2048, n_threads=threads))
        sampling = Sampling(temperature=0, max_tokens=tokens, ignore_eos=True)
        rates = []
        for _ in range(reps + 1):
            times, done = [], None
            for e in host.chat_stream([ChatMessage(**m) for m in PROMPT], sampling):
                if isinstance(e, Token):
                    times.append(time.perf_counter())
                elif isinstance(e, ReplyDone):
                    done = e
            assert done is not None
            rates.append(_stream_rate(times, done.metrics.generated_tokens))
        return statistics.median(rates[1:])  # the first warms up
    finally:
        host.shutdown()


def in_app_parallel(model: Path, threads: int, tokens: int, n: int, reps: int) -> float:
    """Aggregate tokens/s of ``n`` replies generated at once through ``ModelHost`` (no HTTP),
    from the first text to the last reply's end, median of ``reps``."""
    from app.engine.host import ModelHost
    from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling, Token

    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(model), n_ctx=2048, n_threads=threads, n_parallel=n))
        sampling = Sampling(temperature=0, max_tokens=tokens, ignore_eos=True)
        rates = []
        for _ in range(reps + 1):
            for _i in range(n):
                host.chat([ChatMessage(**m) for m in PROMPT], sampling)
            first, done = 0.0, []
            while len(done) < n:
                event = host.poll(1.0)
                if isinstance(event, Token) and not first:
                    first = time.perf_counter()
                elif isinstance(event, ReplyDone):
                    done.append(event)
            generated = sum(d.metrics.generated_tokens for d in done) - n  # after the first
            rates.append(generated / (time.perf_counter() - first))
        return statistics.median(rates[1:])
    finally:
        host.shutdown()


def _client_run(base_url: str, model_id: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, tokens/s, tokens) of one streamed reply."""
    import openai

    # one client per thread, made once: making one costs ~0.2 s of this process's CPU, which
    # would count in the wall time of a concurrent round and take a core from the engine
    client = getattr(_CLIENTS, base_url, None)
    if client is None:
        client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
        setattr(_CLIENTS, base_url, client)
    start = time.perf_counter()
    times = []
    completion = 0
    for chunk in client.chat.completions.create(
            model=model_id, messages=PROMPT, max_tokens=tokens, temperature=0, stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True}):  # type: ignore[call-overload]
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
        if chunk.usage is not None:
            completion = chunk.usage.completion_tokens
    return times[0] - start, _stream_rate(times, completion), completion


def batched_bench(model: Path, threads: int, tokens: int, sequences: list[int]
                  ) -> dict[int, float]:
    """llama-batched-bench's generation tokens/s (all sequences together) at each count in
    ``sequences``; empty without the tool."""
    import re
    import subprocess

    exe = tool("llama-batched-bench")
    if exe is None:
        return {}
    out = subprocess.run(
        [str(exe), "-m", str(model), "-c", str(2048 * max(sequences)), "-b", "512",
         "-ub", "512", "-npp", "32", "-ntg", str(tokens),
         "-npl", ",".join(map(str, sequences)), "-t", str(threads),
         "-fa", engine_flash_attn(model, 2048)],
        capture_output=True, text=True, check=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[2]):
            rates[int(cells[2])] = float(cells[7])  # S_TG t/s
    return rates


def concurrency_table(base_url: str, model_id: str, tokens: int, parallel: int,
                      baseline: dict[int, float]) -> None:
    print(f"{'parallel':>9}{'clients':>8}{'agg tok/s':>11}{'llama.cpp':>11}{'ratio':>7}"
          f"{'p50 TTFT s':>12}{'p99 TTFT s':>12}{'complete':>10}")
    for n in (1, 4, 16):
        with ThreadPoolExecutor(n) as pool:
            # a first round makes each thread's client and warms it up; the second is timed
            list(pool.map(lambda _i: _client_run(base_url, model_id, 4), range(n)))
            start = time.perf_counter()
            runs = list(pool.map(lambda _i: _client_run(base_url, model_id, tokens), range(n)))
        wall = time.perf_counter() - start
        ttfts = sorted(r[0] for r in runs)
        total = sum(r[2] for r in runs)
        p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
        complete = sum(r[2] == tokens for r in runs)
        base = baseline.get(min(n, parallel))
        base_text = f"{base:>11.1f}{total / wall / base:>7.2f}" if base else f"{'':>18}"
        print(f"{parallel:>9}{n:>8}{total / wall:>11.1f}{base_text}"
              f"{statistics.median(ttfts):>12.2f}{p99:>12.2f}{complete:>7}/{n}")


def main() -> None:
    from app.core.embedded import embedded_model_path
    from app.engine.protocol import LoadSettings
    from app.engine.runner import default_threads
    from app.engine.shared_host import SharedHost
    from app.server.config import ServerConfig
    from app.server.runner import ServerRunner
    from tests.server.conftest import load

    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrent-tokens", type=int, default=64)
    parser.add_argument("--parallel", default="1,4",
                        help="sequence counts to serve with, comma-separated (default 1,4)")
    args = parser.parse_args()
    model = Path(args.model) if args.model else embedded_model_path()
    assert model is not None
    parallels = [int(p) for p in args.parallel.split(",")]

    engine_rate = in_app(model, args.threads, args.tokens, args.reps)
    baseline = batched_bench(model, args.threads, args.concurrent_tokens,
                             sorted({min(n, p) for p in parallels for n in (1, 4, 16)}))
    print(f"model {model.name}, threads {args.threads}, {args.tokens} tokens, "
          f"median of {args.reps}")
    print(f"\n{'engine (ModelHost), no HTTP':<34}{'agg tok/s':>10}{'llama.cpp':>11}{'ratio':>7}")
    for parallel in parallels:
        rate = in_app_parallel(model, args.threads, args.concurrent_tokens, parallel, args.reps)
        base = baseline.get(parallel)
        base_text = f"{base:>11.1f}{rate / base:>7.2f}" if base else ""
        print(f"{f'{parallel} replies at once':<34}{rate:>10.1f}{base_text}")
    for index, parallel in enumerate(parallels):
        shared = SharedHost()
        load(shared, LoadSettings(str(model), n_ctx=2048, n_threads=args.threads,
                                  n_parallel=parallel))
        runner = ServerRunner(shared, ServerConfig(port=0))
        runner.start()
        try:
            _client_run(runner.base_url, model.stem, 8)  # warm up
            if index == 0:
                api_rates = [_client_run(runner.base_url, model.stem, args.tokens)[1]
                             for _ in range(args.reps)]
                api_rate = statistics.median(api_rates)
                print(f"{'path':<28}{'tok/s':>10}")
                print(f"{'in-app engine (ModelHost)':<28}{engine_rate:>10.1f}")
                print(f"{'API stream (openai client)':<28}{api_rate:>10.1f}")
                print(f"{'ratio API / engine':<28}{api_rate / engine_rate:>10.3f}")
                print(f"\n{args.concurrent_tokens} tokens per client; llama.cpp: "
                      "llama-batched-bench generation at min(clients, parallel) sequences")
            concurrency_table(runner.base_url, model.stem, args.concurrent_tokens, parallel,
                              baseline)
        finally:
            runner.stop()
            shared.shutdown()


if __name__ == "__main__":
    main()
