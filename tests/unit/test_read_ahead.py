"""Reading ahead (``SharedHost.read_ahead``): the prompt of a reply decoded before the reply is
asked for, on the real engine. The reply that follows starts from that cache and says what it
says without it; a read-ahead never waits, never delays other work, and never stands in the way
of a load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.host import Crashed, HostEvent
from app.engine.protocol import ChatMessage, Failed, LoadSettings, ReplyDone, Sampling, Token
from app.engine.shared_host import SharedHost, Work
from tests.server.conftest import load, loaded

GREEDY = Sampling(temperature=0.0, max_tokens=24)
PASSAGE = ("Rivers shape the land they cross: they cut valleys, carry silt to the sea and build "
           "deltas where they slow down. ")


class Events:
    """What one piece of work was told, and when it ended."""

    def __init__(self) -> None:
        self.seen: list[HostEvent] = []
        self.ended = threading.Event()

    def __call__(self, event: HostEvent) -> None:
        self.seen.append(event)
        if isinstance(event, (ReplyDone, Failed, Crashed)):
            self.ended.set()

    def end(self, timeout: float = 120) -> HostEvent:
        assert self.ended.wait(timeout), f"no end within {timeout} s: {self.seen[-3:]}"
        return self.seen[-1]


def reply(shared: SharedHost, messages: list[ChatMessage]) -> ReplyDone:
    events = Events()
    shared.submit("app", events, messages=messages, sampling=GREEDY)
    done = events.end()
    assert isinstance(done, ReplyDone), done
    return done


def read(shared: SharedHost, messages: list[ChatMessage]) -> tuple[Work, Events]:
    events = Events()
    work = shared.read_ahead("app", events, messages)
    assert work is not None
    return work, events


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Iterator[SharedHost]:
    with loaded(LoadSettings(str(tiny_model), n_ctx=2048, n_threads=1)) as shared:
        yield shared


@pytest.fixture(scope="module")
def smollm2_small_batches(smollm2: Path) -> Iterator[SharedHost]:
    """SmolLM2 decoding prompts 64 tokens a batch: a long prompt takes many batches."""
    with loaded(LoadSettings(str(smollm2), n_ctx=4096, n_batch=64, n_ubatch=64)) as shared:
        yield shared


def test_a_reply_after_a_read_ahead_starts_from_its_cache_and_says_the_same(
        tiny: SharedHost) -> None:
    messages = [ChatMessage("user", "Tell me about rivers. " + PASSAGE * 3)]
    tiny.forget()
    alone = reply(tiny, messages)
    tiny.forget()
    _, events = read(tiny, messages)
    ended = events.end()
    # the prompt was decoded, nothing was sampled or sent as text
    assert isinstance(ended, ReplyDone) and ended.finish_reason == "length"
    assert ended.text == "" and ended.metrics.generated_tokens == 0
    assert ended.metrics.prompt_tokens == alone.metrics.prompt_tokens
    assert not [e for e in events.seen if isinstance(e, Token)]
    after = reply(tiny, messages)
    assert after.text == alone.text and alone.metrics.generated_tokens == 24
    # all of the prompt: the first token came from the logits the read-ahead left
    assert after.metrics.cached_tokens == after.metrics.prompt_tokens
    assert alone.metrics.cached_tokens == 0


def test_a_message_read_while_typed_keeps_what_the_sent_message_shares(
        tiny: SharedHost) -> None:
    history = [ChatMessage("user", "Hello " + PASSAGE), ChatMessage("assistant", "Indeed.")]
    sent = [*history, ChatMessage("user", PASSAGE * 2 + "What do rivers carry?")]
    typed = [*history, ChatMessage("user", PASSAGE * 2 + "What do riv")]
    tiny.forget()
    alone = reply(tiny, sent)
    tiny.forget()
    ahead = read(tiny, typed)[1].end()
    assert isinstance(ahead, ReplyDone)
    after = reply(tiny, sent)
    assert after.text == alone.text
    # the typed prompt is reused but its end: the template's close of the turn and the reply's
    # header after the message (about 20 of this vocabulary's tokens, nearly one a character),
    # and the unfinished word's tokens
    assert ahead.metrics.prompt_tokens - 30 <= after.metrics.cached_tokens
    assert after.metrics.cached_tokens < ahead.metrics.prompt_tokens


def test_a_read_ahead_waits_for_nothing_and_delays_nothing(tiny: SharedHost) -> None:
    long_reply = Events()
    running = tiny.submit("app", long_reply, messages=[ChatMessage("user", "a long story")],
                          sampling=Sampling(temperature=0.0, max_tokens=1900))
    queued = Events()
    tiny.submit("api", queued, messages=[ChatMessage("user", "hi")], sampling=GREEDY)
    try:
        # a reply runs, another waits: no read-ahead is started, none is queued
        assert tiny.read_ahead("app", Events(), [ChatMessage("user", "hi")]) is None
    finally:
        tiny.cancel(running)
    long_reply.end()
    assert isinstance(queued.end(), ReplyDone)


def test_work_that_comes_during_a_read_ahead_ends_it_and_starts_on_its_cache(
        smollm2_small_batches: SharedHost) -> None:
    shared = smollm2_small_batches
    messages = [ChatMessage("user", PASSAGE * 30 + "Which rivers are the longest?")]
    shared.forget()
    alone = reply(shared, messages)
    assert alone.metrics.prompt_tokens > 600  # ten batches and more
    shared.forget()
    work, events = read(shared, messages)
    # the reply is asked for a third of the way into the prompt (by the time it takes alone)
    time.sleep(alone.metrics.ttft_seconds / 3)
    after = reply(shared, messages)
    ended = events.end()
    assert isinstance(ended, ReplyDone) and ended.finish_reason == "stopped"
    assert work.finished_at is not None
    # the reply took over what the read-ahead had decoded, whole batches of it, and said
    # what it says without
    assert 0 < after.metrics.cached_tokens < after.metrics.prompt_tokens - 1
    assert after.metrics.cached_tokens % 64 == 0
    assert after.text == alone.text


def test_a_load_during_a_read_ahead_goes_ahead(smollm2_small_batches: SharedHost,
                                               smollm2: Path) -> None:
    shared = smollm2_small_batches
    shared.forget()
    _, events = read(shared, [ChatMessage("user", PASSAGE * 30 + "And lakes?")])
    load(shared, LoadSettings(str(smollm2), n_ctx=4096, n_batch=64, n_ubatch=64))
    ended = events.end()
    assert isinstance(ended, ReplyDone) and ended.finish_reason == "stopped"
    assert shared.running is None and not shared.active
    assert reply(shared, [ChatMessage("user", "Hi")]).text


def test_a_message_read_whole_needs_no_decode_before_its_first_token(tiny: SharedHost) -> None:
    """The read-ahead's last decode gave the logits of the prompt's last token: the reply
    samples from them, and says what it says when its prompt is decoded (greedy, and sampled
    with a seed)."""
    messages = [ChatMessage("user", "Paused before Send. " + PASSAGE)]
    seeded = Sampling(temperature=0.8, seed=7, max_tokens=24)
    for sampling in (GREEDY, seeded):
        tiny.forget()
        events = Events()
        tiny.submit("app", events, messages=messages, sampling=sampling)
        alone = events.end()
        tiny.forget()
        read(tiny, messages)[1].end()
        events = Events()
        tiny.submit("app", events, messages=messages, sampling=sampling)
        after = events.end()
        assert isinstance(alone, ReplyDone) and isinstance(after, ReplyDone)
        assert after.metrics.cached_tokens == after.metrics.prompt_tokens
        assert after.text == alone.text and after.metrics.generated_tokens == 24


def test_logits_another_decode_replaced_are_not_sampled_from(tiny_model: Path) -> None:
    """Two sequences: after a read-ahead on one, the other decodes (another read-ahead, then
    a reply); the read message's reply then decodes its last token again, and says the
    same."""
    with loaded(LoadSettings(str(tiny_model), n_ctx=1024, n_threads=1,
                             n_parallel=2)) as shared:
        messages = [ChatMessage("user", "Read, then set aside. " + PASSAGE)]
        alone = reply(shared, messages)
        shared.forget()
        other = [ChatMessage("user", "Another conversation altogether, on its own.")]
        for decode_elsewhere in (read, reply):
            shared.forget()
            read(shared, messages)[1].end()
            done = decode_elsewhere(shared, other)  # type: ignore[operator]
            if decode_elsewhere is read:
                done[1].end()
            after = reply(shared, messages)
            assert after.metrics.cached_tokens == after.metrics.prompt_tokens - 1
            assert after.text == alone.text
