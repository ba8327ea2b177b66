"""Memory estimate against measurement: models loaded in the engine child at several contexts.

For each model and context a fresh engine child loads the model, then answers a prompt that
fills the context (the worst case a chat reaches); the measurement is the child's peak RSS
growth over the bare process (its RSS just before loading). The estimate is
``app.core.memory.estimate`` for the same settings. Target: within 10% or 64 MiB, whichever is
larger, on every row.

    .venv/bin/python -m bench.memory
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from app.core import chat_template
from app.core.embedded import embedded_model_path
from app.core.gguf_info import read_model_info
from app.core.memory import MIB, estimate
from app.engine.child import call_in_child
from app.engine.host import ModelHost
from app.engine.probe import full_profile
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling
from tests.helpers.quantize import quantize
from tests.helpers.tiny_model import write_tiny_llama

CONTEXTS = (512, 2048, 8192)


def _fill_text(path: Path, n_ctx: int) -> str:
    """A user message whose rendered prompt nearly fills ``n_ctx`` tokens."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    template = vocab.metadata.get("tokenizer.chat_template")

    def n_tokens(text: str) -> int:
        prompt = chat_template.render(template, [chat_template.Message("user", text)])
        return len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))

    unit = "the river runs to the sea and "
    low, high = 0, n_ctx
    while low < high:  # the most repeats that leave room for one generated token
        mid = (low + high + 1) // 2
        if n_tokens(unit * mid) <= n_ctx - 4:
            low = mid
        else:
            high = mid - 1
    return unit * low


def measure(path: Path, n_ctx: int) -> int:
    """Peak RSS growth of a fresh engine child that loads ``path`` and fills its context."""
    host = ModelHost()
    try:
        loaded = host.load_sync(LoadSettings(str(path), n_ctx=n_ctx))
        done = list(host.chat_stream([ChatMessage("user", _fill_text(path, n_ctx))],
                                     Sampling(max_tokens=1, ignore_eos=True)))[-1]
        assert isinstance(done, ReplyDone)
        return done.metrics.peak_rss_bytes - loaded.rss_before_bytes
    finally:
        host.shutdown()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="quantdesk-membench-"))
    smol = embedded_model_path()
    models = [("tiny F32 (random)", write_tiny_llama(work / "tiny.gguf", n_ctx=8192))]
    if smol is not None:
        models.append(("SmolLM2-135M Q4_1", smol))
        for name, ftype in (("Q8_0", 7), ("Q4_K_M", 15)):
            out = work / f"smollm2-{name}.gguf"
            assert call_in_child(quantize, str(smol), str(out), ftype, True, timeout=600) == 0
            models.append((f"SmolLM2-135M {name} (from Q4_1)", out))
    features = full_profile().repacking_features  # what the engine will repack here
    print("| model | ctx | estimate MiB | measured MiB | error | within target |\n"
          "|---|---:|---:|---:|---:|---|")
    worst = 0.0
    for name, path in models:
        info = read_model_info(path)
        for ctx in CONTEXTS:
            est = estimate(info, ctx, cpu_features=features).total
            got = measure(path, ctx)
            error = est - got
            ok = abs(error) <= max(0.10 * got, 64 * MIB)
            worst = max(worst, abs(error) / got)
            print(f"| {name} | {ctx} | {est / MIB:.1f} | {got / MIB:.1f} | "
                  f"{error / got:+.1%} | {'yes' if ok else 'NO'} |")
    print(f"worst relative error: {worst:.1%}")


if __name__ == "__main__":
    main()
