"""Generation and prompt speed through the engine (child process, tokens streamed to the parent)
against llama-cpp-python called directly in this process: same model, threads, prompts, 128
generated tokens, median of 5 (interleaved, after one warm-up each).

Speeds are what the *caller* sees: prompt tok/s = prompt tokens / time to first token;
generation tok/s = (tokens - 1) / (last token time - first token time). So the engine's cost
(pickling, the pipe, the parent's reads) is inside the numbers. Target: ratio ≥ 0.97 for both.

    .venv/bin/python -m bench.generation [--model FILE] [--threads N] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from app.core import chat_template
from app.core.embedded import embedded_model_path
from app.engine import llama_log, load_params
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling, Token

TEXT = ("The history of computing is a story of abstraction. Each generation of engineers "
        "built tools that hid the details of the layer below, so that the next could think in "
        "larger pieces. ") * 12
N_GEN = 128
SAMPLING = Sampling(temperature=0.0, max_tokens=N_GEN, ignore_eos=True)


def prompts(n: int) -> list[str]:
    """Distinct first words, so no run reuses another's cached prompt."""
    return [f"Run {i}. Summarise this: {TEXT}" for i in range(n)]


def timed(stream: Iterator[float], started: float) -> tuple[float, float, int]:
    """(time to first token, generation span, tokens) from a stream of arrival times."""
    times = list(stream)
    return times[0] - started, times[-1] - times[0], len(times)


def direct_run(llm: object, prompt: str, n_prompt: int,
               eog: list[int]) -> tuple[float, float, float]:
    import llama_cpp

    ctx = llm._ctx.ctx  # type: ignore[attr-defined]
    llama_cpp.llama_perf_context_reset(ctx)

    def arrivals() -> Iterator[float]:
        for chunk in llm.create_completion(  # type: ignore[attr-defined]
                prompt, max_tokens=N_GEN, temperature=SAMPLING.temperature,
                top_p=SAMPLING.top_p, top_k=SAMPLING.top_k, min_p=SAMPLING.min_p,
                repeat_penalty=SAMPLING.repeat_penalty, stream=True,
                logit_bias={t: float("-inf") for t in eog}):
            if chunk["choices"][0]["text"]:
                yield time.perf_counter()

    start = time.perf_counter()
    ttft, span, n = timed(arrivals(), start)
    perf = llama_cpp.llama_perf_context(ctx)
    return n_prompt / ttft, (n - 1) / span, perf.n_eval * 1000.0 / perf.t_eval_ms


def engine_run(host: ModelHost, text: str, n_prompt: int) -> tuple[float, float, float]:
    decode = [0.0]

    def arrivals() -> Iterator[float]:
        for event in host.chat_stream([ChatMessage("user", text)], SAMPLING):
            if isinstance(event, Token) and event.text:
                yield time.perf_counter()
            elif isinstance(event, ReplyDone):
                assert event.metrics.generated_tokens == N_GEN, event.metrics
                decode[0] = event.metrics.generation_tokens_per_second

    start = time.perf_counter()
    ttft, span, n = timed(arrivals(), start)
    return n_prompt / ttft, (n - 1) / span, decode[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    import llama_cpp

    llama_log.install()
    settings = LoadSettings(str(args.model), n_ctx=2048, n_threads=args.threads)
    # the in-process baseline loads with the engine's safe parameters too (app.engine.load_params)
    from llama_cpp import llama_cpp as low_level

    defaults = low_level.llama_model_default_params
    low_level.llama_model_default_params = lambda: load_params.apply(defaults())
    llm = llama_cpp.Llama(str(args.model), n_ctx=2048, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=512, n_ubatch=512,
                          verbose=True)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    eog = [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab))
           if llama_cpp.llama_vocab_is_eog(vocab, t)]
    template = llm.metadata.get("tokenizer.chat_template")
    host = ModelHost()
    host.load_sync(settings)

    texts = prompts(args.reps + 1)
    rendered = [chat_template.render(template, [chat_template.Message("user", t)])
                for t in texts]
    n_prompts = [len(llm.tokenize(r.encode(), add_bos=True, special=True)) for r in rendered]
    results: dict[str, list[tuple[float, float, float]]] = {"direct": [], "engine": []}
    for i, (text, prompt, n_prompt) in enumerate(zip(texts, rendered, n_prompts, strict=True)):
        d = direct_run(llm, prompt, n_prompt, eog)
        e = engine_run(host, text, n_prompt)
        if i > 0:  # the first pair is the warm-up
            results["direct"].append(d)
            results["engine"].append(e)
    host.shutdown()

    def med(path: str, k: int) -> float:
        return statistics.median(r[k] for r in results[path])

    print(f"model: {args.model.name}, threads {args.threads}, prompt {n_prompts[1]} tokens, "
          f"{N_GEN} generated, median of {args.reps}")
    print("| path | prompt tok/s | generation tok/s | llama.cpp decode tok/s |\n"
          "|---|---:|---:|---:|")
    for path in ("direct", "engine"):
        print(f"| {path} (llama-cpp-python {'in process' if path == 'direct' else 'child'}) "
              f"| {med(path, 0):.1f} | {med(path, 1):.1f} | {med(path, 2):.1f} |")
    print("| ratio engine/direct | " + " | ".join(
        f"{med('engine', k) / med('direct', k):.3f}" for k in range(3)) + " |")
    print("(prompt and generation: as the caller sees them; decode: llama.cpp's own timer)")


if __name__ == "__main__":
    main()
