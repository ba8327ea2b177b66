"""Many clients at once: complete, correct, in fair order; a client that leaves frees the engine."""

from __future__ import annotations

import threading
import time

import httpx

from app.engine.host import HostEvent
from app.engine.protocol import ChatMessage, ReplyDone, Sampling
from app.engine.shared_host import SharedHost
from app.server.runner import ServerRunner
from tests.server.conftest import ask, sixteen_at_once


def _ask(runner: ServerRunner, i: int, stream: bool) -> str:
    return ask(runner, i, stream, max_tokens=32)


def test_sixteen_streaming_clients_each_get_their_whole_reply_in_arrival_order(
        tiny_server: ServerRunner) -> None:
    entries = sixteen_at_once(tiny_server, max_tokens=32)
    # fair: the engine took them in the order they arrived, one after another
    by_arrival = sorted(entries, key=lambda e: e.work_id or 0)
    starts = [e.engine_started or 0.0 for e in by_arrival]
    assert starts == sorted(starts)


def test_a_client_that_leaves_mid_stream_frees_the_engine_within_one_token(
        tiny_server: ServerRunner, tiny_shared: SharedHost) -> None:
    tiny_server.log.clear()
    body = {"model": "tiny", "max_tokens": 1900, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "a long story"}]}
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", f"{tiny_server.base_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data")
            if seen == 5:
                break
        assert seen == 5
    # the connection is closed: the server notices, cancels, the engine stops
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = tiny_server.log.entries()
        if entries and entries[0].done and entries[0].engine_finished is not None:
            break
        time.sleep(0.02)
    entry = tiny_server.log.entries()[0]
    assert entry.status == 499
    assert entry.cancelled_at is not None and entry.engine_finished is not None
    assert entry.events_after_cancel <= 1
    assert entry.completion_tokens < 1900
    assert tiny_shared.running is None
    # and the engine answers the next request
    assert _ask(tiny_server, 0, stream=False)


def test_the_windows_chat_gets_the_next_turn_over_a_queue_of_api_requests(
        tiny_shared: SharedHost) -> None:
    """Sources take turns: an app reply submitted behind three API requests runs second."""
    order: list[str] = []
    done = threading.Semaphore(0)

    def watcher(name: str) -> object:
        def on_event(event: HostEvent) -> None:
            if isinstance(event, ReplyDone):
                order.append(name)
                done.release()
        return on_event

    sampling = Sampling(temperature=0, max_tokens=64)
    hello = (ChatMessage("user", "hi"),)
    works = [tiny_shared.submit("api 127.0.0.1", watcher(f"api{i}"),  # type: ignore[arg-type]
                                messages=hello, sampling=sampling) for i in range(3)]
    app = tiny_shared.submit("app", watcher("app"), messages=hello,  # type: ignore[arg-type]
                             sampling=sampling)
    dropped = tiny_shared.submit("api 127.0.0.1", watcher("dropped"),  # type: ignore[arg-type]
                                 messages=hello, sampling=sampling)
    tiny_shared.cancel(dropped)  # queued: ends at once, never reaches the engine
    assert dropped.finished_at is not None and dropped.started_at is None
    for _ in range(5):
        assert done.acquire(timeout=30)
    assert order[0] == "dropped"
    assert order[1:] == ["api0", "app", "api1", "api2"]
    assert all(w.tokens == 64 for w in [*works, app])
