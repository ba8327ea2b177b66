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
from tests.helpers.tiny_model import write_tiny_llama

HELLO = (ChatMessage("user", "Hello"),)


@pytest.fixture
def host() -> Iterator[ModelHost]:
    h = ModelHost()
    yield h
    h.shutdown()


def _wait(host: ModelHost, kind: type, timeout: float = 30.0) -> list[object]:
    """Collect events until one of ``kind`` (returned last)."""
    seen: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = host.poll(0.1)
        if event is not None:
            seen.append(event)
            if isinstance(event, kind):
                return seen
    raise AssertionError(f"no {kind.__name__} within {timeout} s; saw {seen[-5:]}")


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


def test_stop_takes_effect_within_one_token(host: ModelHost, tiny_model: Path) -> None:
    host.load_sync(LoadSettings(str(tiny_model), n_ctx=2048))
    host.chat(HELLO, Sampling(max_tokens=1800))
    seen = 0
    stopped_after: int | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        event = host.poll(0.1)
        assert not isinstance(event, (Crashed, Failed)), event
        if isinstance(event, Token):
            seen += 1
            if seen == 5:
                host.stop()
                stopped_after = seen
        elif isinstance(event, ReplyDone):
            break
    assert isinstance(event, ReplyDone)
    assert event.finish_reason == "stopped"
    assert stopped_after is not None
    # Tokens already in flight when Stop was pressed may still arrive, but generation ends at
    # the next token boundary: far fewer than the 1800 asked for.
    assert event.metrics.generated_tokens < 1800
    assert event.metrics.generated_tokens <= seen + 1
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
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model.read_bytes()[: 200_000])
    with pytest.raises(EngineError, match="could not be loaded") as info:
        host.load_sync(LoadSettings(str(broken)))
    assert info.value.log_tail  # llama.cpp's own words come along
    assert host.alive
    assert host.load_sync(LoadSettings(str(tiny_model), n_ctx=256)).n_ctx == 256


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
    host.active_request = 5
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
