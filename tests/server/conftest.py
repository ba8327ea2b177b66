"""A real server on 127.0.0.1 (port 0) over a real engine child, for the ``openai`` client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from app.engine.protocol import Failed, Loaded, LoadSettings
from app.engine.shared_host import SharedHost
from app.server.config import ServerConfig
from app.server.request_log import LogEntry
from app.server.runner import ServerRunner
from tests.helpers.tiny_model import write_tiny_llama


def load(shared: SharedHost, settings: LoadSettings, timeout: float = 120) -> Loaded:
    """Load and wait for the engine's answer."""
    got: list[object] = []
    done = threading.Event()

    def on_event(event: object) -> None:
        if isinstance(event, (Loaded, Failed)):
            got.append(event)
            done.set()

    shared.add_listener(on_event)
    try:
        shared.load(settings)
        assert done.wait(timeout), "the model did not load"
    finally:
        shared.remove_listener(on_event)
    assert isinstance(got[0], Loaded), got[0]
    return got[0]


@contextmanager
def loaded(settings: LoadSettings) -> Iterator[SharedHost]:
    """A shared engine with ``settings`` loaded, shut down at the end."""
    shared = SharedHost()
    try:
        load(shared, settings)
        yield shared
    finally:
        shared.shutdown()


def serve(shared: SharedHost, **config: object) -> ServerRunner:
    runner = ServerRunner(shared, ServerConfig(port=0, **config))  # type: ignore[arg-type]
    runner.start()
    return runner


def client(runner: ServerRunner, api_key: str = "unused", **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=runner.base_url, api_key=api_key, max_retries=0, **kwargs)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("server-models") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_shared(tiny_path: Path) -> Iterator[SharedHost]:
    """The tiny model (context 2048, one thread) in a shared engine."""
    with loaded(LoadSettings(str(tiny_path), n_ctx=2048, n_threads=1)) as shared:
        yield shared


@pytest.fixture(scope="module")
def tiny_server(tiny_shared: SharedHost) -> Iterator[ServerRunner]:
    runner = serve(tiny_shared, max_tokens_limit=4096)
    yield runner
    runner.stop()


def ask(runner: ServerRunner, i: int, stream: bool, max_tokens: int) -> str:
    """Client number ``i``'s greedy reply (streamed or not) through the openai client."""
    kwargs = {"model": "tiny", "max_tokens": max_tokens, "temperature": 0,
              "messages": [{"role": "user", "content": f"client number {i}"}]}
    c = client(runner, timeout=120)
    if not stream:
        return c.chat.completions.create(**kwargs).choices[0].message.content or ""  # type: ignore[call-overload]
    return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        **kwargs, stream=True) if ch.choices)  # type: ignore[call-overload]


def sixteen_at_once(runner: ServerRunner, max_tokens: int) -> list[LogEntry]:
    """Sixteen clients ask at once, streaming; each reply must be the one it gets asked alone
    (none dropped, cut or mixed with another's tokens). Returns the server's log of the sixteen."""
    from concurrent.futures import ThreadPoolExecutor

    alone = [ask(runner, i, False, max_tokens) for i in range(16)]  # the oracle
    assert len(set(alone)) > 1
    runner.log.clear()
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda i: ask(runner, i, True, max_tokens), range(16)))
    assert together == alone
    entries = runner.log.entries()
    assert len(entries) == 16 and all(e.status == 200 for e in entries)
    assert all(e.completion_tokens == max_tokens for e in entries)
    return entries
