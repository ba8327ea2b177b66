"""Parallel sequences (``--parallel N``): several replies generated at once in one batched
decode per token, each exactly the reply it gets alone; stopping one leaves the others; the
memory plan counts each sequence's cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.core import memory
from app.core.gguf_info import read_model_info
from app.engine.host import EngineBusy, HostEvent, ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling, Token
from app.engine.shared_host import SharedHost
from app.server.runner import ServerRunner
from tests.server.conftest import load, serve, sixteen_at_once

PARALLEL = 4


@pytest.fixture(scope="module")
def parallel_server(tiny_path: Path) -> Iterator[ServerRunner]:
    shared = SharedHost()
    loaded = load(shared, LoadSettings(str(tiny_path), n_ctx=1024, n_threads=1,
                                       n_parallel=PARALLEL))
    assert loaded.n_parallel == PARALLEL and loaded.n_ctx >= 1024  # each sequence's own
    runner = serve(shared)
    yield runner
    runner.stop()
    shared.shutdown()


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, delta in points:
        now += delta
        most = max(most, now)
    return most


def test_sixteen_clients_run_four_at_a_time_and_each_gets_its_reply_alone(
        parallel_server: ServerRunner) -> None:
    # batched with up to three others, every reply is token for token the one it got alone
    entries = sixteen_at_once(parallel_server, max_tokens=48)
    intervals = [(e.engine_started or 0.0, e.engine_finished or 0.0) for e in entries]
    assert _most_at_once(intervals) == PARALLEL  # several ran together, never more than four
    by_arrival = sorted(entries, key=lambda e: e.work_id or 0)
    starts = [e.engine_started or 0.0 for e in by_arrival]
    assert starts == sorted(starts)  # taken in the order they arrived


def _collect(host: ModelHost, ids: list[int], stop_after: dict[int, int]
             ) -> dict[int, tuple[list[str], ReplyDone]]:
    """Read events until every reply in ``ids`` is done; stop a reply after it sent the number
    of text events given in ``stop_after``. Counts text events that arrive after that stop."""
    texts: dict[int, list[str]] = {i: [] for i in ids}
    done: dict[int, ReplyDone] = {}
    while len(done) < len(ids):
        event = host.poll(1.0)
        if isinstance(event, Token):
            texts[event.request_id].append(event.text)
            if len(texts[event.request_id]) == stop_after.get(event.request_id):
                host.stop(event.request_id)
        elif isinstance(event, ReplyDone):
            done[event.request_id] = event
        else:
            assert event is None or not hasattr(event, "message"), event
    return {i: (texts[i], done[i]) for i in ids}


def test_stopping_one_reply_leaves_the_others_running(tiny_path: Path) -> None:
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(tiny_path), n_ctx=512, n_threads=1, n_parallel=3))
        sampling = Sampling(temperature=0, max_tokens=200, ignore_eos=True)
        prompts = [f"story {i}" for i in range(3)]
        alone = []
        for p in prompts:
            events = list(host.chat_stream([ChatMessage("user", p)], sampling))
            assert isinstance(events[-1], ReplyDone)
            alone.append(events[-1].text)
        ids = [host.chat([ChatMessage("user", p)], sampling) for p in prompts]
        with pytest.raises(EngineBusy):  # three sequences, three replies running
            host.chat([ChatMessage("user", "a fourth")], sampling)
        got = _collect(host, ids, stop_after={ids[1]: 5})
        stopped_texts, stopped = got[ids[1]]
        assert stopped.finish_reason == "stopped"
        assert len(stopped_texts) <= 6  # at most one event after the stop
        assert stopped.text == "".join(stopped_texts) and alone[1].startswith(stopped.text)
        for i in (0, 2):
            texts, reply = got[ids[i]]
            assert reply.finish_reason == "length" and reply.metrics.generated_tokens == 200
            assert reply.text == "".join(texts) == alone[i]
        assert host.active == {}
    finally:
        host.shutdown()


def test_a_conversation_goes_back_to_the_sequence_that_holds_its_history(
        tiny_path: Path) -> None:
    """With several sequences, the next turn finds the cache of its own last turn, even after
    another conversation used a sequence in between."""
    shared = SharedHost()
    try:
        load(shared, LoadSettings(str(tiny_path), n_ctx=512, n_threads=1, n_parallel=2))
        sampling = Sampling(temperature=0, max_tokens=16)
        results: list[ReplyDone] = []
        finished = threading.Semaphore(0)

        def on_event(event: HostEvent) -> None:
            if isinstance(event, ReplyDone):
                results.append(event)
                finished.release()

        first = (ChatMessage("user", "the first conversation"),)
        shared.submit("app", on_event, messages=first, sampling=sampling)
        assert finished.acquire(timeout=60)
        shared.submit("other", on_event, messages=(ChatMessage("user", "another one"),),
                      sampling=sampling)
        assert finished.acquire(timeout=60)
        follow = (*first, ChatMessage("assistant", results[0].text),
                  ChatMessage("user", "and then?"))
        shared.submit("app", on_event, messages=follow, sampling=sampling)
        assert finished.acquire(timeout=60)
        assert results[2].metrics.cached_tokens >= results[0].metrics.prompt_tokens
    finally:
        shared.shutdown()


@pytest.mark.slow
def test_each_sequence_costs_the_kv_cache_the_plan_adds(smollm2: Path) -> None:
    """Measured: the child's memory for four sequences less that for one is the three extra
    KV caches the estimate counts (within 10%)."""
    info = read_model_info(smollm2)
    grown = {}
    for n in (1, 4):
        host = ModelHost()
        try:
            loaded = host.load_sync(LoadSettings(str(smollm2), n_ctx=2048, n_threads=1,
                                                 n_parallel=n))
            grown[n] = loaded.rss_bytes - loaded.rss_before_bytes
        finally:
            host.shutdown()
    one, four = (memory.estimate(info, 2048, n_seq=n) for n in (1, 4))
    assert four.cpu.kv_cache == 4 * one.cpu.kv_cache
    extra = four.cpu.total - one.cpu.total
    assert abs((grown[4] - grown[1]) - extra) <= 0.1 * extra


def test_quantdesk_serve_parallel_from_the_command_line(tiny_path: Path) -> None:
    """``quantdesk serve --parallel 2`` as a user runs it: a separate process that says where it
    serves, answers two clients at once, and ends on Ctrl-C; a bad count is a usage error."""
    import re
    import signal
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "app", "serve", str(tiny_path), "--parallel",
                          "0"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--parallel must be between 1 and" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", str(tiny_path), "--port", "0",
                             "--ctx", "512", "--threads", "1", "--parallel", "2"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        for line in proc.stderr:
            if line.startswith("serving"):
                break
        found = re.search(r"at (http://\S+/v1), 2 replies at once", line)
        assert found, line
        import openai

        api = openai.OpenAI(base_url=found.group(1), api_key="x", max_retries=0, timeout=60)
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda i: api.completions.create(
                model="tiny", prompt=f"number {i}", max_tokens=20, temperature=0), range(2)))
        assert all(r.usage is not None and r.usage.completion_tokens == 20 for r in replies)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    rest = proc.stderr.read()
    assert code == 0 and "stopped" in rest and "Traceback" not in rest, rest
