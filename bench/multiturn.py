"""Does a long conversation stay quick to answer? Time to first token at turn 5 against turn 1.

A conversation on SmolLM2 Q4_K_M or ``--model`` (the chat template, the engine child, the pipe:
what the Chat page gets) grows over four turns to about ``--history`` tokens (long user
messages, as when a document is pasted, and the model's own replies, sampled as the Chat page
samples by default with a seed per conversation: a sampled reply is often written in other
tokens than its text tokenizes to, and the next turn must reuse it all the same), then a fifth
message is sent. The same message is also sent as the first turn of a fresh conversation. Then
another conversation takes the sequence (the long one is put aside on disk,
``app.engine.kv_shelf``) and the long one goes on (brought back instead of decoded again: 9.5 s
on 2 cores before the shelf).
Time to first token is measured by the caller: send to the first streamed text. Target
(issue 17): turn 5 at most 1.2x turn 1. Median of ``--reps`` conversations, each with its own
opening words so that none reuses another's cache.

    .venv/bin/python -m bench.multiturn [--threads 2] [--reps 3] [--history 2000] [--model F]

Attention over the history is what turn 5 costs more than turn 1, and llama.cpp's own cost
for it (printed beside) sets how close to turn 1 it can come: on the CPU, a lot for a small
model (SmolLM2's layers hold little next to its cache), little for a large one. A random-weight
model with a large model's layers (``tests.helpers.tiny_model``, ``n_embd=4096, n_ff=14336,
n_head=32, n_head_kv=8``: Llama 3 8B's, a few of them) shows the second case on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from app.core.sampling import Sampling
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Token
from bench._llama_tools import engine_flash_attn, quantized, run_timed, tool

PASSAGE = ("Rivers shape the land they cross: they cut valleys, carry silt to the sea and build "
           "deltas where they slow down. People settled beside them for water, food and "
           "trade, and many cities still stand where a river could be crossed. ")
NEW_MESSAGE = "Summarise what we discussed in two sentences."
SAMPLING = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=48)
HISTORY_REPLY_TOKENS = 128
N_CTX = 4096  # the engine's context in this bench
# An empty data folder: conversations put aside by an earlier run (app/engine/kv_shelf.py) are
# not taken over; this run's own are, where it measures that.
os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-multiturn-")
WORDS = ("Amber", "Birch", "Cedar", "Dune", "Ember", "Fjord", "Grove", "Heath")


def ask(host: ModelHost, messages: list[ChatMessage], sampling: Sampling = SAMPLING
        ) -> tuple[str, float, ReplyDone]:
    """(reply, time to its first text, the metrics event) for ``messages``."""
    start = time.perf_counter()
    first = 0.0
    text: list[str] = []
    done = None
    for event in host.chat_stream(tuple(messages), sampling):
        if isinstance(event, Token) and event.text:
            first = first or time.perf_counter()
            text.append(event.text)
        elif isinstance(event, ReplyDone):
            done = event
    assert done is not None
    return "".join(text), (first or time.perf_counter()) - start, done


def passage_tokens(host: ModelHost) -> int:
    """How many tokens PASSAGE takes in the loaded model's vocabulary (45 in SmolLM2's)."""
    one = ask(host, [ChatMessage("user", "Size.")], Sampling(max_tokens=1))[2]
    two = ask(host, [ChatMessage("user", "Size." + PASSAGE)], Sampling(max_tokens=1))[2]
    return two.metrics.prompt_tokens - one.metrics.prompt_tokens


def conversation(host: ModelHost, rep: int, history_tokens: int, passage: int
                 ) -> dict[str, float]:
    opening = f"{WORDS[rep % len(WORDS)]} {rep}. "
    # turn 1 of a fresh conversation, on a sequence holding nothing worth putting aside (the
    # "Hello" turn takes it from the previous conversation, which goes on the shelf)
    ask(host, [ChatMessage("user", f"{opening}Hello.")])
    _, turn1, done1 = ask(host, [ChatMessage("user", f"{opening}{NEW_MESSAGE}")])
    per_turn = history_tokens // 4
    user = opening + PASSAGE * max(1, per_turn // passage) + "What does this say about rivers?"
    messages: list[ChatMessage] = []
    sampled = Sampling(max_tokens=HISTORY_REPLY_TOKENS, seed=rep)  # the Chat page's defaults
    for _turn in range(4):
        messages.append(ChatMessage("user", user))
        reply, _, _ = ask(host, messages, sampled)
        messages.append(ChatMessage("assistant", reply))
        user = f"{opening}More, turn {_turn + 2}. " + PASSAGE * max(1, per_turn // passage)
    messages.append(ChatMessage("user", NEW_MESSAGE))
    _, turn5, done5 = ask(host, messages)
    # another conversation takes the sequence (the long one is put aside on the shelf) ...
    _, other, _ = ask(host, [ChatMessage("user", f"{opening}Another topic. {NEW_MESSAGE}")])
    # ... and the long one goes on (brought back from the shelf)
    _, back, done_back = ask(host, messages)
    return {"history": done5.metrics.prompt_tokens, "cached": done5.metrics.cached_tokens,
            "turn1": turn1, "turn5": turn5, "other": other, "back": back,
            "turn1_prompt": done1.metrics.prompt_tokens - done1.metrics.cached_tokens,
            "back_cached": done_back.metrics.cached_tokens}


def reload_and_go_on(host: ModelHost, settings: LoadSettings, history_tokens: int,
                     passage: int) -> dict[str, float]:
    """A conversation, the model unloaded and loaded again with the same settings, the
    conversation going on; then the same after a load with other settings (another context
    length: the shelf left is not valid for it, and the conversation is decoded whole)."""
    opening = "Reopened. "
    user = (opening + PASSAGE * max(1, history_tokens // passage)
            + "What does this say about rivers?")
    messages = [ChatMessage("user", user)]
    reply, _, _ = ask(host, messages)
    messages += [ChatMessage("assistant", reply), ChatMessage("user", NEW_MESSAGE)]
    host.load_sync(settings)  # the unload leaves the conversation on the shelf
    _, ttft, done = ask(host, messages)
    host.load_sync(replace(settings, n_ctx=settings.n_ctx + 256))
    _, fresh, _ = ask(host, messages)
    host.load_sync(settings)
    return {"history": done.metrics.prompt_tokens, "cached": done.metrics.cached_tokens,
            "ttft": ttft, "fresh": fresh}


REQUESTS = ("Write a Python function that sorts a list of dictionaries by several keys.",
            "Tell me about the history of Rome in three paragraphs.",
            "Write a bash script that backs up a folder, with comments.",
            "Write a JSON object describing a book with nested fields.",
            "Explain how a transformer works, with a small table in Markdown.",
            "List ten fruits with a short description of each.")
REPLY_TOKENS = 300
THANKS = "Thanks. One more sentence, please."


def next_turn(host: ModelHost, request: str, seed: int) -> dict[str, float]:
    """A sampled reply, then the next turn: how many of the tokens the cache held after the
    reply (its prompt and the reply, but the last token sampled) that turn decoded again, and
    its time to first token."""
    first = [ChatMessage("user", request)]
    reply, _, done1 = ask(host, first, Sampling(max_tokens=REPLY_TOKENS, seed=seed))
    _, ttft, done2 = ask(host, [*first, ChatMessage("assistant", reply),
                                ChatMessage("user", THANKS)])
    held = done1.metrics.prompt_tokens + done1.metrics.generated_tokens - 1
    return {"again": held - done2.metrics.cached_tokens, "ttft": ttft}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--history", type=int, default=2000)
    parser.add_argument("--model", type=Path, default=None,
                        help="another GGUF with a chat template (default: SmolLM2 Q4_K_M)")
    args = parser.parse_args()
    model = args.model or quantized("Q4_K_M")
    host = ModelHost()
    settings = LoadSettings(str(model), n_ctx=N_CTX, n_threads=args.threads)
    host.load_sync(settings)
    ask(host, [ChatMessage("user", "Hello")])  # warm-up
    passage = passage_tokens(host)
    runs = [conversation(host, rep, args.history, passage) for rep in range(args.reps)]
    reopened = reload_and_go_on(host, settings, args.history, passage)
    rewritten = [next_turn(host, request, seed) for request in REQUESTS for seed in range(3)]
    host.shutdown()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"{model.name}, threads {args.threads}, median of {args.reps} conversations\n")
    print("| turn | prompt tokens | of them cached | decoded | time to first token "
          "| vs turn 1 |\n|---|---:|---:|---:|---:|---:|")
    print(f"| 1 (fresh conversation) | – | – | {med('turn1_prompt'):.0f} "
          f"| {med('turn1') * 1000:.0f} ms | 1.00 |")
    print(f"| 5 (history kept) | {med('history'):.0f} | {med('cached'):.0f} | "
          f"{med('history') - med('cached'):.0f} | {med('turn5') * 1000:.0f} ms "
          f"| **{med('turn5') / med('turn1'):.2f}** |")
    print(f"| 1 of another conversation, the long one put aside | – | – | – | "
          f"{med('other') * 1000:.0f} ms | {med('other') / med('turn1'):.2f} |")
    print(f"| 5 again, brought back from the shelf | {med('history'):.0f} | "
          f"{med('back_cached'):.0f} | {med('history') - med('back_cached'):.0f} | "
          f"{med('back') * 1000:.0f} ms | {med('back') / med('turn1'):.2f} |")
    new_tokens = round(med("history") - med("cached"))
    floor = llama_depth_cost(model, args.threads, new_tokens, round(med("history")))
    if floor is not None:
        print(f"\nllama.cpp itself (llama-bench, flash attention {floor[2]}): {new_tokens} new "
              f"tokens at depth 0 {floor[0] * 1000:.0f} ms, at depth {med('history'):.0f} "
              f"{floor[1] * 1000:.0f} ms: **{floor[1] / floor[0]:.2f}x**, the least turn 5 can "
              "cost against turn 1 with this build")
        print(f"turn 5 against llama.cpp's time for its new tokens at its depth: "
              f"**{med('turn5') / floor[1]:.2f}x** (the template, tokenizing the conversation "
              "and the pipe are the rest)")
    print("\ntarget: turn 5 (history kept) at most 1.2x turn 1")
    print(f"\nA conversation going on after the model was unloaded and loaded again (as when "
          f"the app is reopened): {reopened['history']:.0f} prompt tokens, "
          f"{reopened['cached']:.0f} of them from the shelf the unload left, first token "
          f"{reopened['ttft'] * 1000:.0f} ms; decoded whole after a load with other settings "
          f"(the shelf not for it): {reopened['fresh'] * 1000:.0f} ms")
    again = [r["again"] for r in rewritten]
    print(f"\nThe turn after a sampled reply ({len(rewritten)} replies: code and prose, "
          f"{REPLY_TOKENS} tokens at most, the Chat page's sampling): the reply's tokens "
          f"decoded again at the next turn: none in {sum(a == 0 for a in again)} of "
          f"{len(again)}; most {max(again)}; time to first token median "
          f"{statistics.median(r['ttft'] for r in rewritten) * 1000:.0f} ms, "
          f"most {max(r['ttft'] for r in rewritten) * 1000:.0f} ms")


def llama_depth_cost(model: Path, threads: int, n: int, depth: int
                     ) -> tuple[float, float, str] | None:
    """Seconds llama-bench takes for a batch of ``n`` tokens at depth 0 and at ``depth``
    (flash attention as the engine loads by default), or None without the tool."""
    exe = tool("llama-bench")
    if exe is None:
        return None
    fa = engine_flash_attn(model, N_CTX)
    _, out = run_timed([str(exe), "-m", str(model), "-t", str(threads), "-fa", fa,
                        "-p", str(n), "-n", "0", "-d", f"0,{depth}", "-r", "5", "-o", "json"])
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    at = {int(r.get("n_depth", 0)): n / float(r["avg_ts"]) for r in rows}
    return at[0], at[depth], "on" if fa == "1" else "off"


if __name__ == "__main__":
    main()
