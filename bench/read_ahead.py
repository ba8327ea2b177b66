"""How much sooner does a reply start when the chat reads the message while it is typed?

The chat reads ahead (``ChatSession.read_ahead``, ``SharedHost.read_ahead``): when typing pauses,
the engine decodes the conversation and the message so far, so Send finds them in the cache.
Two cases, each timed from Send to the first streamed text, with and without reading ahead, on
the engine the window uses (``SharedHost``; SmolLM2 Q4_K_M or ``--model``):

- a document of about ``--document`` tokens pasted into a new conversation, then a question
  typed for ``--typing`` seconds: the paste is read from the moment it lands (the question's
  own pauses are not counted: a conservative reading), and Send comes ``--typing`` seconds
  later;
- turn 5 of a conversation with about 2,000 tokens of history (issue 17's multi-turn case) and
  turn 1 of a fresh one, the same message typed: read up to its last word at a pause, then
  Send a second later; and read whole (a pause before Send, as when the message is read over
  before sending). Without reading ahead this is ``bench/multiturn.py``'s measurement.

Median of ``--reps`` runs, each with its own opening words so that none reuses another's cache.

    .venv/bin/python -m bench.read_ahead [--threads 2] [--reps 3] [--typing 5] [--document 2000]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import tempfile
import time
from pathlib import Path

from app.engine.host import HostEvent
from app.engine.protocol import (
    ChatMessage,
    Failed,
    Loaded,
    LoadSettings,
    ReplyDone,
    Sampling,
    Token,
)
from app.engine.shared_host import SharedHost
from bench._llama_tools import quantized
from bench.multiturn import NEW_MESSAGE, PASSAGE, WORDS

# an empty data folder: no conversation put aside by an earlier run is taken over
os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-read-ahead-")

SAMPLING = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=32)
HISTORY_REPLY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=128)
QUESTION = "Which of these rivers would you visit first, and why?"
N_CTX = 4096


class Bench:
    def __init__(self, shared: SharedHost) -> None:
        self.shared = shared

    def send(self, messages: list[ChatMessage], sampling: Sampling = SAMPLING
             ) -> tuple[float, ReplyDone]:
        """Time from submitting to the first text, and the reply's end."""
        events: queue.Queue[HostEvent] = queue.Queue()
        start = time.perf_counter()
        self.shared.submit("app", events.put, messages=messages, sampling=sampling)
        first = 0.0
        while True:
            event = events.get(timeout=600)
            if isinstance(event, Token) and event.text and not first:
                first = time.perf_counter() - start
            if isinstance(event, Failed):
                raise RuntimeError(event.message)
            if isinstance(event, ReplyDone):
                return first or time.perf_counter() - start, event

    def read_ahead(self, messages: list[ChatMessage]) -> queue.Queue[HostEvent]:
        """Start reading ahead (the engine is idle here); its events."""
        events: queue.Queue[HostEvent] = queue.Queue()
        work = self.shared.read_ahead("app", events.put, messages)
        assert work is not None, "the engine was busy"
        return events

    def typed(self, messages: list[ChatMessage], read_at_pause: list[ChatMessage],
              typing: float) -> tuple[float, ReplyDone]:
        """``read_at_pause`` read ahead from now, ``messages`` sent ``typing`` seconds later."""
        start = time.perf_counter()
        self.read_ahead(read_at_pause)
        time.sleep(max(0.0, typing - (time.perf_counter() - start)))
        return self.send(messages)


def document_case(bench: Bench, rep: int, tokens: int, passage: int, typing: float
                  ) -> dict[str, float]:
    opening = f"{WORDS[rep % len(WORDS)]} {rep}. "
    document = opening + PASSAGE * max(1, tokens // passage)
    full = [ChatMessage("user", f"{document}\n\n{QUESTION}")]
    bench.send([ChatMessage("user", f"{opening} Hello.")])  # the cache holds another chat
    plain, done = bench.send(full)
    bench.send([ChatMessage("user", f"{opening} Hello again.")])
    ahead, done_ahead = bench.typed(full, [ChatMessage("user", document)], typing)
    return {"prompt": done.metrics.prompt_tokens, "plain": plain, "ahead": ahead,
            "cached": done_ahead.metrics.cached_tokens}


def four_turns(bench: Bench, opening: str, passage: int) -> list[ChatMessage]:
    """A conversation of four turns, about 2,000 tokens, its last reply in the cache."""
    messages: list[ChatMessage] = []
    for turn in range(4):
        messages.append(ChatMessage("user", f"{opening}Turn {turn + 1}. "
                                    + PASSAGE * max(1, 380 // passage)))
        _, done = bench.send(messages, HISTORY_REPLY)
        messages.append(ChatMessage("assistant", done.text))
    return messages


def history_case(bench: Bench, rep: int, passage: int) -> dict[str, float]:
    """Turn 1 and turn 5, the same message sent at once, typed (read up to its last word at a
    pause, Send a second later) and read whole before Send, each in a conversation of its
    own."""
    opening = f"{WORDS[rep % len(WORDS)]} {rep + 10}. "
    message = ChatMessage("user", NEW_MESSAGE)
    at_pause = ChatMessage("user", NEW_MESSAGE.rsplit(" ", 1)[0])
    first = [ChatMessage("user", f"{opening}{NEW_MESSAGE}")]
    times: dict[str, float] = {}
    for name, read in (("plain", None), ("ahead", f"{opening}{at_pause.content}"),
                       ("whole", first[0].content)):
        bench.send([ChatMessage("user", f"{opening}Hello, {name}.")])
        times[f"{name}1"] = (bench.send(first)[0] if read is None else
                             bench.typed(first, [ChatMessage("user", read)], 1.0)[0])
    history = four_turns(bench, f"{opening}A. ", passage)
    times["plain5"], done5 = bench.send([*history, message])
    history = four_turns(bench, f"{opening}B. ", passage)
    times["ahead5"], done_ahead5 = bench.typed([*history, message], [*history, at_pause], 1.0)
    history = four_turns(bench, f"{opening}C. ", passage)
    times["whole5"], done_whole5 = bench.typed([*history, message], [*history, message], 1.0)
    return {"history": done5.metrics.prompt_tokens, **times,
            "decoded5": done_ahead5.metrics.prompt_tokens - done_ahead5.metrics.cached_tokens,
            "decoded_whole5": (done_whole5.metrics.prompt_tokens
                               - done_whole5.metrics.cached_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--typing", type=float, default=5.0,
                        help="seconds between the paste and Send (the question being typed)")
    parser.add_argument("--document", type=int, default=2000)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or quantized("Q4_K_M")
    shared = SharedHost()
    loaded: queue.Queue[HostEvent] = queue.Queue()
    shared.add_listener(loaded.put)
    shared.load(LoadSettings(str(model), n_ctx=N_CTX, n_threads=args.threads))
    while not isinstance(event := loaded.get(timeout=600), (Loaded, Failed)):
        pass
    if isinstance(event, Failed):
        raise SystemExit(event.message)
    bench = Bench(shared)
    bench.send([ChatMessage("user", "Hello")])  # warm-up
    one = bench.send([ChatMessage("user", "Size.")])[1].metrics.prompt_tokens
    two = bench.send([ChatMessage("user", "Size." + PASSAGE)])[1].metrics.prompt_tokens
    passage = two - one
    docs = [document_case(bench, rep, args.document, passage, args.typing)
            for rep in range(args.reps)]
    turns = [history_case(bench, rep, passage) for rep in range(args.reps)]
    shared.shutdown()

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"{model.name}, threads {args.threads}, median of {args.reps}; time from Send to "
          "the first text\n")
    def ms(runs: list[dict[str, float]], key: str) -> str:
        return f"{med(runs, key) * 1000:.0f} ms"

    print("| case | prompt tokens | sent at once | read up to its last word "
          "| read whole |\n|---|---:|---:|---:|---:|")
    print(f"| a document pasted, Send {args.typing:g} s later | {med(docs, 'prompt'):.0f} "
          f"| {ms(docs, 'plain')} | {ms(docs, 'ahead')} (the paste only) | – |")
    print(f"| turn 1, a short message | – | {ms(turns, 'plain1')} | {ms(turns, 'ahead1')} "
          f"| {ms(turns, 'whole1')} |")
    print(f"| turn 5, about 2,000 tokens of history | {med(turns, 'history'):.0f} "
          f"| {ms(turns, 'plain5')} | {ms(turns, 'ahead5')} | {ms(turns, 'whole5')} |")
    print(f"| turn 5 ÷ turn 1 (issue 17's target: at most 1.2) | | "
          f"{med(turns, 'plain5') / med(turns, 'plain1'):.2f} "
          f"| {med(turns, 'ahead5') / med(turns, 'ahead1'):.2f} "
          f"| {med(turns, 'whole5') / med(turns, 'whole1'):.2f} |")
    print(f"\ntokens Send still decoded: the document "
          f"{med(docs, 'prompt') - med(docs, 'cached'):.0f}; turn 5 read up to its last word "
          f"{med(turns, 'decoded5'):.0f}, read whole {med(turns, 'decoded_whole5'):.0f}")


if __name__ == "__main__":
    main()
