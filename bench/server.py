"""Server benchmark: tokens/s through the OpenAI API against the in-app engine, and 1/4/16
concurrent streaming clients (aggregate tokens/s, p50/p99 time to first token).

    python -m bench.server [MODEL] [--threads N] [--tokens 128] [--reps 3]

Same model, same threads, greedy, ``ignore_eos`` so every reply has the same length. The
in-app figure is measured the way the Chat page sees it: Token events through ``ModelHost``,
first to last. The API figure is measured by an ``openai`` client reading the stream, first
chunk to last. Concurrent clients share one engine (fair queue), so aggregate tokens/s stays
near the single-client rate and time to first token grows with the queue.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


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


def _client_run(base_url: str, model_id: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, tokens/s, tokens) of one streamed reply."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
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
    args = parser.parse_args()
    model = Path(args.model) if args.model else embedded_model_path()
    assert model is not None

    engine_rate = in_app(model, args.threads, args.tokens, args.reps)
    shared = SharedHost()
    load(shared, LoadSettings(str(model), n_ctx=2048, n_threads=args.threads))
    runner = ServerRunner(shared, ServerConfig(port=0))
    runner.start()
    try:
        _client_run(runner.base_url, model.stem, 8)  # warm up
        api_rates = [_client_run(runner.base_url, model.stem, args.tokens)[1]
                     for _ in range(args.reps)]
        api_rate = statistics.median(api_rates)
        print(f"model {model.name}, threads {args.threads}, {args.tokens} tokens, "
              f"median of {args.reps}")
        print(f"{'path':<28}{'tok/s':>10}")
        print(f"{'in-app engine (ModelHost)':<28}{engine_rate:>10.1f}")
        print(f"{'API stream (openai client)':<28}{api_rate:>10.1f}")
        print(f"{'ratio API / engine':<28}{api_rate / engine_rate:>10.3f}")
        print()
        print(f"{'clients':>8}{'agg tok/s':>12}{'p50 TTFT s':>12}{'p99 TTFT s':>12}"
              f"{'complete':>10}")
        for n in (1, 4, 16):
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                runs = list(pool.map(lambda _i: _client_run(
                    runner.base_url, model.stem, args.concurrent_tokens), range(n)))
            wall = time.perf_counter() - start
            ttfts = sorted(r[0] for r in runs)
            total = sum(r[2] for r in runs)
            p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
            complete = sum(r[2] == args.concurrent_tokens for r in runs)
            print(f"{n:>8}{total / wall:>12.1f}{statistics.median(ttfts):>12.2f}{p99:>12.2f}"
                  f"{complete:>7}/{n}")
    finally:
        runner.stop()
        shared.shutdown()


if __name__ == "__main__":
    main()
