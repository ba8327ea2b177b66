"""Chat speed through the engine against llama-bench, in the same run, on the same model, threads
and flash-attention setting (the engine's default, both sides).

QuantDesk's numbers are what the caller of the engine sees (the child process, the pipe, the
parent's reads included): prompt tok/s = prompt tokens / time to the first token; generation
tok/s = (tokens - 1) / (last text's arrival - first text's). Generation is measured for both
kinds of reader: a person (the window and ``quantdesk chat`` ask for an event every 40 ms at
most, ``READING_INTERVAL``) and a program (the server: an event per token). Prompts are raw
text that starts with a different word each run, so no run reuses another's cached tokens.
llama-bench measures pp512 (a 512-token prompt) and tg128 at the depth of our prompt (``-d``:
128 tokens generated after that many tokens of context). The engine's context is sized as
llama-bench sizes its own, the prompt and the tokens generated: a larger context costs llama.cpp
itself a few percent at the same depth (llama-batched-bench here, SmolLM2 Q4_K_M, 635 + 128
tokens: generation 2.6% slower with a 2,048-token context than with 768, 4.2% with 4,096), so
the chat's own context would measure llama.cpp's sizing, not QuantDesk. The two sides take
turns, one run each (this machine's speed drifts by 10% within minutes, so sides measured
minutes apart compare the drift), and each ratio is the median of the runs' ratios. Targets
(issue 17): generation ≥ 0.95x and prompt ≥ 0.90x llama-bench, on SmolLM2 Q4_K_M and Q8_0.

    QUANTDESK_LLAMA_TOOLS=… .venv/bin/python -m bench.generation [--threads 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from app.core.sampling import Sampling
from app.engine.host import ModelHost
from app.engine.protocol import READING_INTERVAL, LoadSettings, ReplyDone, Token
from bench._llama_tools import engine_flash_attn, quantized, run_timed, tool

TEXT = ("The history of computing is a story of abstraction. Each generation of engineers "
        "built tools that hid the details of the layer below, so that the next could think in "
        "larger pieces. ")
N_GEN = 128
# An empty data folder: conversations put aside by an earlier run (app/engine/kv_shelf.py) are
# not taken over, and every run decodes its whole prompt.
os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-generation-")
N_CTX = 2048  # the engine's context while it measures the prompt's length
SAMPLING = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=N_GEN, ignore_eos=True)


def prompt(i: int, target_tokens: int) -> str:
    """Run i's prompt: about ``target_tokens`` tokens, opening as no other run's does."""
    words = ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India",
             "Juliet", "Kilo", "Lima")
    return f"{words[i % len(words)]} {i}. " + TEXT * max(1, target_tokens // 28)


def engine_run(host: ModelHost, text: str, event_interval: float = READING_INTERVAL,
               max_cached: int = 0) -> tuple[int, float, float]:
    """(prompt tokens, prompt tok/s, generation tok/s) as the caller sees them. At most
    ``max_cached`` of the prompt's tokens may come from the cache (a byte-level vocabulary
    shares its first few with any prompt); the prompt speed counts those decoded."""
    arrivals: list[float] = []
    start = time.perf_counter()
    done = None
    for event in host.chat_stream((), SAMPLING, prompt=text, event_interval=event_interval):
        if isinstance(event, Token) and event.text:
            arrivals.append(time.perf_counter())
        elif isinstance(event, ReplyDone):
            done = event
    assert done is not None and done.metrics.generated_tokens == N_GEN, done
    assert done.metrics.cached_tokens <= max_cached, done  # a fresh prompt each run
    n_prompt = done.metrics.prompt_tokens
    # tokens from the reply's figure: a busy reader gets several per event (host_child)
    return (n_prompt, (n_prompt - done.metrics.cached_tokens) / (arrivals[0] - start),
            (N_GEN - 1) / (arrivals[-1] - arrivals[0]))


def paired(ours: list[tuple[int, float, float]], k: int,
           bases: list[tuple[float, float]], b: int) -> float:
    """The median of the runs' ratios: our figure ``k`` against llama-bench's ``b``, run by
    run (each run beside the llama-bench run after it)."""
    return statistics.median(r[k] / x[b] for r, x in zip(ours, bases, strict=True))


def llama_bench(model: Path, threads: int, depth: int, n_ctx: int, n_gpu_layers: int = 0,
                n_prompt: int = 512) -> tuple[float, float] | None:
    """(pp``n_prompt``, tg128 at ``depth``) tokens/s from one llama-bench run of each, or None
    without the tool. Flash attention as the engine sets it for a context of ``n_ctx`` with
    ``n_gpu_layers`` (-1: all, as the engine counts them; llama-bench's -ngl 99)."""
    exe = tool("llama-bench")
    if exe is None:
        return None
    fa = engine_flash_attn(model, n_ctx, n_gpu_layers)
    common = [str(exe), "-m", str(model), "-t", str(threads), "-fa", fa,
              "-ngl", str(99 if n_gpu_layers < 0 else n_gpu_layers), "-r", "1", "-o", "json"]
    _, out = run_timed([*common, "-p", str(n_prompt), "-n", "0"])
    pp = json.loads(out[out.index("["):out.rindex("]") + 1])[0]["avg_ts"]
    _, out = run_timed([*common, "-p", "0", "-n", str(N_GEN), "-d", str(depth)])
    tg = json.loads(out[out.index("["):out.rindex("]") + 1])[0]["avg_ts"]
    return float(pp), float(tg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    args = parser.parse_args()
    print(f"threads {args.threads}, {N_GEN} tokens generated, {args.reps} runs a side, taking "
          "turns (medians); "
          "flash attention as the engine loads each model by default, on both sides; the "
          "engine's context sized as llama-bench's (the prompt and the tokens generated)\n")
    print("| model | prompt tokens | QuantDesk prompt tok/s | llama-bench pp512 | ratio | "
          "QuantDesk generation tok/s | llama-bench tg128 @depth | ratio | "
          "an event per token | ratio |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for quant in ("Q4_K_M", "Q8_0"):
        model = quantized(quant)
        host = ModelHost()
        host.load_sync(LoadSettings(str(model), n_ctx=N_CTX, n_threads=args.threads))
        n_prompt = engine_run(host, prompt(0, args.prompt_tokens))[0]
        # the context llama-bench gives itself: the prompt and the tokens generated (llama.cpp
        # rounds both up to a multiple of 256: room for the runs' prompts, a token or two
        # longer)
        n_ctx = n_prompt + N_GEN
        host.load_sync(LoadSettings(str(model), n_ctx=n_ctx, n_threads=args.threads))
        engine_run(host, prompt(200, args.prompt_tokens))  # the warm-up
        runs, per_token, bases = [], [], []
        for i in range(1, args.reps + 1):
            runs.append(engine_run(host, prompt(i, args.prompt_tokens)))
            per_token.append(engine_run(host, prompt(i + 100, args.prompt_tokens), 0.0))
            base = llama_bench(model, args.threads, n_prompt, n_ctx)
            if base is not None:
                bases.append(base)
        host.shutdown()
        pp = statistics.median(r[1] for r in runs)
        tg = statistics.median(r[2] for r in runs)
        tg1 = statistics.median(r[2] for r in per_token)
        if not bases:
            print(f"| SmolLM2 {quant} | {n_prompt} | {pp:.1f} | – | – | {tg:.1f} | – | – "
                  f"| {tg1:.1f} | – |")
            continue
        print(f"| SmolLM2 {quant} | {n_prompt} | {pp:.1f} | "
              f"{statistics.median(b[0] for b in bases):.1f} | "
              f"**{paired(runs, 1, bases, 0):.3f}** | {tg:.1f} | "
              f"{statistics.median(b[1] for b in bases):.1f} | "
              f"**{paired(runs, 2, bases, 1):.3f}** | {tg1:.1f} | "
              f"{paired(per_token, 2, bases, 1):.3f} |")


if __name__ == "__main__":
    main()
