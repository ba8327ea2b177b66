"""The token loop in C (app/engine/_token_loop.c) on the real llama.cpp: it gives the Python
loop's replies token for token, and comes back to Python when Stop, a request or the reader
needs it."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.sampling import Sampling
from app.engine import token_loop
from app.engine.generation import Generator, Reply
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Token

SEA = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
JAPANESE = "The Japanese word for cat is 猫. The Japanese word for dog is"
FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
SAMPLINGS = {
    "greedy": (SEA, Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=64)),
    "seeded": (SEA, Sampling(seed=11, max_tokens=96)),
    "stop strings": (SEA, Sampling(seed=3, max_tokens=96, stop=("\n", "the"))),
    "characters split across tokens": (JAPANESE, Sampling(temperature=0.0, repeat_penalty=1.0,
                                                           max_tokens=40)),
    "to the end of turn": (FRANCE, Sampling(temperature=0.0, max_tokens=200)),
}


@pytest.fixture(scope="module")
def smol_gen(smollm2: Path) -> Iterator[Generator]:
    gen = Generator(LoadSettings(str(smollm2), n_ctx=2048, n_threads=2))
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def tiny_gen(tiny_model: Path) -> Iterator[Generator]:
    gen = Generator(LoadSettings(str(tiny_model), n_ctx=2048, n_threads=2))
    yield gen
    gen.close()


def test_the_token_loop_in_c_is_built() -> None:
    # the install builds it (optional there, so that a machine without a compiler still
    # installs); where the suite runs, a compiler built llama.cpp, so it must be here
    assert token_loop.available()


@pytest.mark.parametrize("case", list(SAMPLINGS))
def test_the_c_loop_gives_the_python_loops_reply(smol_gen: Generator, case: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    prompt, sampling = SAMPLINGS[case]
    tokens = smol_gen.tokenize(prompt)
    chunks: list[int] = []
    real_run = token_loop.run

    def counted(*args: object, **kwargs: object) -> token_loop.Chunk:
        chunk = real_run(*args, **kwargs)  # type: ignore[arg-type]
        chunks.append(len(chunk.tokens))
        return chunk

    def reply(c_loop: bool) -> tuple[object, ...]:
        smol_gen.reset()
        pieces: list[tuple[str, int]] = []
        outcome = smol_gen.generate(
            tokens, sampling, on_text=lambda text, n: pieces.append((text, n)) or True,
            # a should_stop keeps the reply in Python, token by token
            should_stop=None if c_loop else (lambda: False))
        assert "".join(text for text, _ in pieces) == outcome.text
        assert all("\ufffd" not in text for text, _ in pieces)
        return (outcome.text, outcome.finish_reason, outcome.generated_tokens,
                sum(n for _, n in pieces), smol_gen.cached())

    *in_python, python_cache = reply(c_loop=False)
    monkeypatch.setattr(token_loop, "run", counted)
    *in_c, c_cache = reply(c_loop=True)
    assert in_c == in_python
    assert in_c[0]
    if case == "stop strings":
        # C decodes each token before Python reads its text: the token with the stop string
        # and the rest of its run are in the cache too (the next prompt drops them)
        assert c_cache[:len(python_cache)] == python_cache
    else:
        assert c_cache == python_cache
    # every token after the first came from C, several at a time
    assert sum(chunks) >= in_c[2] - 1 and max(chunks) > 1
    if case == "to the end of turn":
        assert in_c[1] == "stop"
    if case == "stop strings":
        assert in_c[1] == "stop" and "\n" not in in_c[0] and "the" not in in_c[0]


def _generating(gen: Generator, sampling: Sampling) -> Reply:
    """A reply on the tiny model past its prompt, its first token sampled."""
    gen.reset()
    reply = gen.begin(gen.tokenize("Once upon a time"), sampling, on_text=lambda *_: True)
    while reply.prompting:
        gen.step([reply])
    assert reply.outcome is None and len(reply.pending) == 1
    return reply


def test_stop_takes_effect_before_the_next_token(tiny_gen: Generator) -> None:
    reply = _generating(tiny_gen, Sampling(max_tokens=500))
    slot = ctypes.c_int64(42)  # the stop slot already names this reply
    pending, before = reply.pending[0], len(tiny_gen.cached())
    tiny_gen.run(reply, token_loop.Pace(stop_slot=ctypes.addressof(slot), stop_value=42,
                                        wait=10.0))
    assert reply.outcome is not None and reply.outcome.finish_reason == "stopped"
    assert reply.outcome.generated_tokens == 1  # the first token only: none after Stop
    assert tiny_gen.cached()[before:] == [pending]  # the last token was decoded, as in step


def test_a_waiting_request_brings_the_loop_back_after_one_token(tiny_gen: Generator) -> None:
    reply = _generating(tiny_gen, Sampling(max_tokens=500))
    read, write = os.pipe()
    try:
        os.write(write, b"x")
        tiny_gen.run(reply, token_loop.Pace(fd=read, wait=10.0))
    finally:
        os.close(read)
        os.close(write)
    assert reply.outcome is None and reply.generated == 2  # one more, then back to Python
    assert len(reply.pending) == 1


def test_the_loop_comes_back_when_the_reader_can_take_an_event(tiny_gen: Generator) -> None:
    read_count = ctypes.c_int64(0)
    busy = token_loop.Pace(consumed_slot=ctypes.addressof(read_count), sent=1, wait=0.0)
    ready = token_loop.Pace(consumed_slot=ctypes.addressof(read_count), sent=0, wait=0.0)
    reply = _generating(tiny_gen, Sampling(max_tokens=100_000))
    tiny_gen.run(reply, ready)  # the reader has read everything: back after one token
    assert reply.generated == 2
    start = time.monotonic()
    tiny_gen.run(reply, busy)  # the reader is busy: on until MAX_SECONDS
    # by the clock, not a token count: a loaded machine makes fewer tokens in that time
    assert time.monotonic() - start >= token_loop.MAX_SECONDS
    assert reply.generated >= 3 and reply.outcome is None
    reply.release()


def test_a_decode_the_loop_cannot_make_returns_llama_cpps_status(tiny_gen: Generator) -> None:
    reply = _generating(tiny_gen, Sampling(max_tokens=50))
    chunk = token_loop.run(tiny_gen.ctx, reply._sampler, tiny_gen.vocab, token=reply.pending[0],
                           pos=reply.pos, seq=7,  # the context has one sequence
                           budget=10, ignore_eog=False, pace=token_loop.Pace())
    assert chunk == token_loop.Chunk([], 0, token_loop.End.ERROR, -1)
    reply.release()


def test_events_count_every_token_when_the_c_loop_sends_several_at_once(tiny_model: Path
                                                                        ) -> None:
    host = ModelHost(event_interval=0.04)
    try:
        host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048, n_threads=2))
        start = time.monotonic()
        events = list(host.chat_stream([ChatMessage("user", "Tell me a story.")],
                                       Sampling(max_tokens=1500, seed=1)))
        seconds = time.monotonic() - start
    finally:
        host.shutdown()
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.finish_reason == "length"
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(e.text for e in tokens) == done.text
    assert sum(e.pieces for e in tokens) == done.metrics.generated_tokens == 1500
    # a person's pace, not an event a token: at most one event an interval (and the first and
    # last), however fast or slow the machine made the tokens
    assert len(tokens) <= seconds / 0.04 + 2
