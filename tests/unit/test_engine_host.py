"""The model host child process, on the tiny model (fast) and SmolLM2 (meaningful output)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.host import Crashed, EngineBusy, EngineCrashed, EngineError, ModelHost
from app.engine.protocol import (
    ChatMessage,
    Failed,
    Loaded,
    LoadProgress,
    LoadSettings,
    ReplyDone,
    Sampling,
    Token,
)
from tests.helpers.address_space import starve
from tests.helpers.tiny_model import write_tiny_llama

HELLO = (ChatMessage("user", "Hello"),)


@pytest.fixture
def host() -> Iterator[ModelHost]:
    h = ModelHost()
    yield h
    h.shutdown()


def _wait(host: ModelHost, kind: type | tuple[type, ...], timeout: float = 30.0) -> list[object]:
    """Collect events until one of ``kind`` (returned last)."""
    seen: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = host.poll(0.1)
        if event is not None:
            seen.append(event)
            if isinstance(event, kind):
                return seen
    raise AssertionError(f"no {kind} within {timeout} s; saw {seen[-5:]}")


def test_load_reports_progress_and_model_facts(host: ModelHost, tiny_model: Path) -> None:
    host.load(LoadSettings(str(tiny_model), n_ctx=512))
    events = _wait(host, Loaded)
    fractions = [e.fraction for e in events if isinstance(e, LoadProgress)]
    assert fractions and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions)
    loaded = events[-1]
    assert isinstance(loaded, Loaded)
    assert loaded.n_ctx == 512 and loaded.n_ctx_train == 2048
    assert loaded.template_source == "model"
    assert loaded.rss_bytes > 10 * 1024**2
    assert host.loaded == loaded


def test_streams_tokens_then_metrics(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))
    events = list(host.chat_stream(HELLO, Sampling(max_tokens=40, seed=1)))
    tokens = [e for e in events if isinstance(e, Token)]
    done = events[-1]
    assert isinstance(done, ReplyDone)
    assert done.finish_reason == "length"  # the tiny model never ends its turn
    assert done.text == "".join(t.text for t in tokens)
    m = done.metrics
    assert m.generated_tokens == 40
    assert m.prompt_tokens > 5
    assert m.generation_tokens_per_second > 0 and m.prompt_tokens_per_second > 0
    assert 0 < m.ttft_seconds <= m.total_seconds
    assert m.peak_rss_bytes >= host.loaded.rss_bytes if host.loaded else True
    assert host.active_request is None


def test_same_seed_same_reply(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))

    def reply(seed: int) -> str:
        done = list(host.chat_stream(HELLO, Sampling(max_tokens=20, seed=seed)))[-1]
        assert isinstance(done, ReplyDone)
        return done.text

    assert reply(7) == reply(7)
    assert reply(7) != reply(8)


def _tokens_after_stop(host: ModelHost, stop_at: int, reader_delay: float
                       ) -> tuple[int, int, str, ReplyDone]:
    """Read a long reply; right after reading event ``stop_at`` (and ``reader_delay`` seconds
    of being busy elsewhere, as a GUI may be), call stop(). Returns the events read before the
    stop, the events that arrived after it, the text streamed and the ReplyDone."""
    host.chat(HELLO, Sampling(max_tokens=1800, seed=stop_at))
    before = after = 0
    streamed: list[str] = []
    stopped = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        event = host.poll(0.1)
        assert not isinstance(event, (Crashed, Failed)), event
        if isinstance(event, Token):
            streamed.append(event.text)
            if stopped:
                after += 1
                continue
            before += 1
            if before == stop_at:
                time.sleep(reader_delay)  # the child must not send ahead meanwhile
                host.stop()
                stopped = True
        elif isinstance(event, ReplyDone):
            return before, after, "".join(streamed), event
    raise AssertionError("the reply did not end")


@pytest.mark.parametrize(("stop_at", "reader_delay"), [(1, 0.0), (5, 0.0), (40, 0.0),
                                                       (5, 0.05), (150, 0.02)])
def test_at_most_one_event_arrives_after_stop(host: ModelHost, tiny_model: Path, stop_at: int,
                                              reader_delay: float) -> None:
    # The tiny model writes to max_tokens at thousands of tokens a second: without a bound,
    # tens or hundreds of tokens would be in the pipe by the time the reader calls stop().
    # The child sends a piece only when everything sent before was read (holding the text
    # meanwhile), so one event at most can be on its way when stop() is called.
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    before, after, streamed, done = _tokens_after_stop(host, stop_at, reader_delay)
    assert before == stop_at
    assert after <= 1
    assert done.finish_reason == "stopped"
    # What the reply holds is exactly what was streamed; text held back at Stop was dropped,
    # and its tokens are not counted as the reply's (one printable byte per token here).
    assert done.text == streamed
    assert done.metrics.generated_tokens == len(done.text)
    # The host is usable again at once.
    again = list(host.chat_stream(HELLO, Sampling(max_tokens=3)))[-1]
    assert isinstance(again, ReplyDone) and again.finish_reason == "length"


def test_second_request_while_generating_is_refused(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    host.chat(HELLO, Sampling(max_tokens=1500))
    with pytest.raises(EngineBusy):
        host.chat(HELLO)
    with pytest.raises(EngineBusy):
        host.load(LoadSettings(str(tiny_model)))
    host.stop()
    _wait(host, ReplyDone)


def test_broken_model_fails_clearly_and_host_survives(host: ModelHost, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    # A damaged file is refused by QuantDesk's header check before llama.cpp reads it
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model.read_bytes()[: 200_000])
    with pytest.raises(EngineError, match=r"could not be loaded: broken\.gguf is truncated"):
        host.load_sync(LoadSettings(str(broken)))
    # A well-formed file llama.cpp cannot run: llama.cpp's own words come along
    alien = tmp_path / "alien.gguf"
    alien.write_bytes(tiny_model.read_bytes().replace(b"llama", b"zzzzz", 1))
    with pytest.raises(EngineError, match="could not be loaded") as info:
        host.load_sync(LoadSettings(str(alien)))
    assert any("zzzzz" in line for line in info.value.log_tail), info.value.log_tail
    assert host.alive
    assert host.load_sync(LoadSettings(str(tiny_model), n_ctx=256)).n_ctx == 256


def test_forget_without_a_running_engine_removes_what_earlier_loads_left(host: ModelHost
                                                                        ) -> None:
    """A conversation deleted while no engine runs (none started yet, or it died) must not
    leave its keys, values and tokens on disk until the next engine starts."""
    from app.core import paths

    left = paths.cache_location() / "kv-left-0123456789abcdef"
    left.mkdir(parents=True)
    (left / "0.state").write_bytes(b"keys and values")
    assert not host.alive
    host.forget()
    assert not left.exists()


def test_chat_before_load_fails(host: ModelHost) -> None:
    host.start()
    with pytest.raises(EngineError, match="No model is loaded"):
        list(host.chat_stream(HELLO))


def test_conversation_longer_than_context_is_refused(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=256))
    with pytest.raises(EngineError, match="more than the model's context"):
        list(host.chat_stream((ChatMessage("user", "x" * 2000),)))


def test_killed_child_is_reported_with_signal_and_log(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    host.chat(HELLO, Sampling(max_tokens=1800))
    _wait(host, Token)
    assert host.pid is not None
    os.kill(host.pid, signal.SIGKILL)
    crash = _wait(host, Crashed)[-1]
    assert isinstance(crash, Crashed)
    assert crash.exitcode == -signal.SIGKILL
    assert "SIGKILL" in crash.message
    assert any("llama" in line for line in crash.log_tail)
    assert host.active_request is None and host.loaded is None
    assert host.poll(0.1) is None  # reported once
    # Reload works in a fresh child.
    host.kill()
    assert host.load_sync(LoadSettings(str(tiny_model), n_ctx=256)).n_ctx == 256


def test_crash_surfaces_as_exception_in_sync_helpers(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    stream = host.chat_stream(HELLO, Sampling(max_tokens=1800))
    next(stream)
    assert host.pid is not None
    os.kill(host.pid, signal.SIGKILL)
    with pytest.raises(EngineCrashed, match="SIGKILL"):
        list(stream)


def test_malicious_template_is_refused(host: ModelHost, tmp_path: Path) -> None:
    payload = "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}"
    model = write_tiny_llama(tmp_path / "evil.gguf", chat_template=payload)
    host.load_sync(LoadSettings(str(model), n_ctx=256))
    with pytest.raises(EngineError, match="tried to reach Python internals"):
        list(host.chat_stream(HELLO))


RUNAWAY = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def test_runaway_template_fails_within_two_seconds_and_the_child_goes_on(
        host: ModelHost, tmp_path: Path, tiny_model: Path) -> None:
    model = write_tiny_llama(tmp_path / "runaway.gguf", chat_template=RUNAWAY)
    host.load_sync(LoadSettings(str(model), n_ctx=256))
    pid = host.pid
    start = time.monotonic()
    with pytest.raises(EngineError, match=r"^The model's chat template ran for more than 1 s"):
        list(host.chat_stream(HELLO))
    assert time.monotonic() - start < 2.0
    assert host.alive and host.pid == pid and host.active_request is None
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=256))
    done = list(host.chat_stream(HELLO, Sampling(max_tokens=4)))[-1]
    assert isinstance(done, ReplyDone) and host.pid == pid


def test_stop_reaches_a_template_still_rendering(host: ModelHost, tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "runaway.gguf", chat_template=RUNAWAY)
    host.load_sync(LoadSettings(str(model), n_ctx=256))
    host.chat(HELLO)
    time.sleep(0.2)
    start = time.monotonic()
    host.stop()
    done = _wait(host, ReplyDone, timeout=5)[-1]
    assert time.monotonic() - start < 0.5  # not the 1 s budget: Stop got through
    assert isinstance(done, ReplyDone) and done.finish_reason == "stopped" and done.text == ""


def test_a_child_that_cannot_allocate_is_replaced_on_the_next_load(host: ModelHost,
                                                                   tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))
    limited = host.pid
    assert limited is not None
    # Below what the child already maps: llama.cpp's next allocation fails, as when the
    # machine is out of memory.
    starve(limited)
    with pytest.raises(EngineError, match=r"could not be loaded: .*(allocate|memory)"):
        host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))
    assert host.alive and host.pid == limited
    loaded = host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))
    assert host.pid != limited and loaded.n_ctx == 512
    done = list(host.chat_stream(HELLO, Sampling(max_tokens=4)))[-1]
    assert isinstance(done, ReplyDone)


def test_a_reply_starved_of_memory_ends_clearly_and_the_next_load_is_fresh(
        host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    limited = host.pid
    assert limited is not None
    request = host.chat(HELLO, Sampling(max_tokens=1900))
    _wait(host, Token)
    starve(limited)
    end = _wait(host, (ReplyDone, Failed, Crashed), timeout=180)[-1]
    # Python's next arena fails (MemoryError: reported, the child marked unusable), native
    # code aborts (libgomp or llama.cpp cannot allocate), or the reply needed no more memory
    # before its end. Whichever: the reply ends, clearly, and the engine is usable after.
    if isinstance(end, Failed):
        assert end.request_id == request and end.unusable
        assert "ran out of memory" in end.message
    elif isinstance(end, Crashed):
        assert end.exitcode in (-signal.SIGABRT, -signal.SIGSEGV), end
    else:
        assert isinstance(end, ReplyDone) and end.metrics.generated_tokens == 1900
        with pytest.raises(EngineError, match=r"could not be loaded"):
            host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))  # the starved child
    assert host.active_request is None
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))
    assert host.pid != limited
    done = list(host.chat_stream(HELLO, Sampling(max_tokens=4)))[-1]
    assert isinstance(done, ReplyDone)


def test_model_without_template_uses_chatml(host: ModelHost, tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "plain.gguf", chat_template=None)
    loaded = host.load_sync(LoadSettings(str(model), n_ctx=256))
    assert loaded.template_source == "fallback"
    done = list(host.chat_stream(HELLO, Sampling(max_tokens=4)))[-1]
    assert isinstance(done, ReplyDone)


def test_switching_models_replaces_the_loaded_one(host: ModelHost, tiny_model: Path,
                                                  tiny_model_f16: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=256))
    pid = host.pid
    loaded = host.load_sync(LoadSettings(str(tiny_model_f16), n_ctx=256))
    assert loaded.path == str(tiny_model_f16) and host.pid == pid


def test_failed_event_for_unknown_request_does_not_clear_active(host: ModelHost) -> None:
    host.active[5] = 0
    host._track(Failed(None, "load failed"))
    assert host.active_request == 5


@pytest.mark.slow
def test_smollm2_gives_a_sensible_english_answer(host: ModelHost, smollm2: Path) -> None:
    host.load_sync(LoadSettings(str(smollm2), n_ctx=2048))
    events = list(host.chat_stream(
        (ChatMessage("system", "You are a helpful assistant."),
         ChatMessage("user", "What is the capital of France? Answer in one short sentence.")),
        Sampling(temperature=0.0, max_tokens=64)))
    done = events[-1]
    assert isinstance(done, ReplyDone)
    assert done.finish_reason == "stop"  # ended at the template's end-of-turn token
    assert "<|im_end|>" not in done.text
    assert "Paris" in done.text
    letters = [c for c in done.text if c.isalpha()]
    assert letters and sum(c.isascii() for c in letters) / len(letters) > 0.95
    assert done.metrics.generated_tokens < 64


def test_peak_rss_is_the_childs_own_not_the_parents(host: ModelHost, tiny_model: Path) -> None:
    # Make this (parent) process much larger than the child will ever be; the child's peak
    # must not inherit it (ru_maxrss would: it survives execve).
    ballast = bytearray(600 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    loaded = host.load_sync(LoadSettings(str(tiny_model), n_ctx=512))
    done = list(host.chat_stream(HELLO, Sampling(max_tokens=4)))[-1]
    assert isinstance(done, ReplyDone)
    assert done.metrics.peak_rss_bytes < 400 * 1024 * 1024
    assert done.metrics.peak_rss_bytes >= loaded.rss_bytes * 0.9
    del ballast


def test_a_slow_reader_gets_the_whole_reply_in_fewer_events(host: ModelHost,
                                                             tiny_model: Path) -> None:
    # A reader busy 5 ms per event (a GUI painting, a server with many clients) does not hold
    # generation back: the child keeps generating and sends what accumulated in one event.
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    events: list[Token] = []
    for event in host.chat_stream(HELLO, Sampling(max_tokens=400, ignore_eos=True)):
        if isinstance(event, Token):
            events.append(event)
            time.sleep(0.005)
    assert isinstance(event, ReplyDone)
    assert event.finish_reason == "length" and event.metrics.generated_tokens == 400
    assert "".join(e.text for e in events) == event.text
    assert sum(e.pieces for e in events) == 400  # one piece per token on this model
    assert len(events) < 200, len(events)  # held pieces went together


def test_a_reader_that_asks_for_an_interval_gets_events_that_far_apart(
        host: ModelHost, tiny_model: Path) -> None:
    # The window asks for a text event every 40 ms at most (it redraws no faster): the reply is
    # the same, in fewer events, and the first piece is not held back.
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=4096))
    greedy = Sampling(temperature=0.0, max_tokens=1500, ignore_eos=True)
    alone = next(e for e in host.chat_stream(HELLO, greedy) if isinstance(e, ReplyDone))
    events: list[Token] = []
    arrived: list[float] = []
    for event in host.chat_stream(HELLO, greedy, event_interval=0.04):
        if isinstance(event, Token):
            events.append(event)
            arrived.append(time.perf_counter())
    assert isinstance(event, ReplyDone)
    assert event.text == alone.text and "".join(e.text for e in events) == event.text
    assert sum(e.pieces for e in events) == 1500
    assert events[0].pieces == 1  # the first token went at once: no wait for the first text
    # the child spaces its events 40 ms apart (the last one is the end's flush): the arrival
    # times can only bunch by the pipe's scheduling
    assert len(events) >= 3
    assert len(events) <= (arrived[-1] - arrived[0]) / 0.04 + 2, (len(events), arrived)


def test_a_reader_on_demand_gets_text_only_when_it_asks(host: ModelHost,
                                                        tiny_model: Path) -> None:
    # The window asks for the next text when it redraws (ChatSession's on_demand): no event
    # comes that nothing would show, none is lost, and the reply is the same.
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=4096))
    greedy = Sampling(temperature=0.0, max_tokens=1500, ignore_eos=True)
    alone = next(e for e in host.chat_stream(HELLO, greedy) if isinstance(e, ReplyDone))

    # never asked: the first text comes at once, the rest with the reply's end
    host.chat(HELLO, greedy, on_demand=True)
    events = _wait(host, ReplyDone)
    texts = [e for e in events if isinstance(e, Token)]
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.text == alone.text
    assert len(texts) == 2 and texts[0].pieces == 1, [t.pieces for t in texts]
    assert texts[0].text + texts[1].text == done.text

    # asked 30 ms after each event (a redraw): each text event answers an ask, but the end's
    request = host.chat(HELLO, greedy, on_demand=True)
    texts: list[Token] = []
    unasked: list[int] = []  # which events came with no ask waiting
    asked = False
    while not isinstance(event := host.poll(0.03), ReplyDone):
        if isinstance(event, Token):
            if texts and not asked:
                unasked.append(len(texts))
            texts.append(event)
            asked = False
        elif event is None and not asked:
            host.more(request)
            asked = True
    assert event.text == alone.text and "".join(t.text for t in texts) == event.text
    assert len(texts) >= 3
    assert unasked in ([], [len(texts) - 1]), (unasked, len(texts))
    host.more(request)  # the reply has ended: nothing to ask for, nothing happens
    assert not host.active
