"""The official ``openai`` client against the real server and engine (the tiny model)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
from pathlib import Path

import httpx
import openai
import pytest

from app.engine.protocol import LoadSettings
from app.engine.shared_host import SharedHost
from app.server.config import ServerConfig, ServerConfigError
from app.server.runner import ServerRunner
from tests.helpers.gguf_mutations import UINT32, Base, encode_kv
from tests.server.conftest import client, load, serve

HELLO = [{"role": "user", "content": "Hello there"}]


def test_models_lists_the_loaded_model_under_its_file_stem(tiny_server: ServerRunner) -> None:
    models = client(tiny_server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client(tiny_server).models.retrieve("tiny").owned_by == "quantdesk"


def test_chat_streamed_equals_not_streamed_and_seeds_reproduce(tiny_server: ServerRunner) -> None:
    c = client(tiny_server)
    kwargs = {"model": "tiny", "messages": HELLO, "max_tokens": 24, "seed": 7,
              "temperature": 0.9}
    first = c.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    again = c.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    other = c.chat.completions.create(**{**kwargs, "seed": 8})  # type: ignore[call-overload]
    text = first.choices[0].message.content
    assert text and text == again.choices[0].message.content
    assert other.choices[0].message.content != text
    # the tiny model never ends a reply itself: it runs to max_tokens
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 24
    # the same conversation again: its prompt came from the cache, and the usage says so
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    chunks = list(c.chat.completions.create(**kwargs, stream=True,  # type: ignore[call-overload]
                                            stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


def test_completions_continue_the_raw_prompt(tiny_server: ServerRunner) -> None:
    c = client(tiny_server)
    done = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16,
                                temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason == "length"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0, stream=True))
    assert streamed == done.choices[0].text
    echoed = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16,
                                  temperature=0, echo=True)
    assert echoed.choices[0].text == "Once upon a time" + done.choices[0].text


def test_a_stop_string_ends_the_reply_before_it(tiny_server: ServerRunner) -> None:
    c = client(tiny_server)
    free = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=40,
                                     temperature=0).choices[0].message.content
    assert free
    stop = free[10:12]  # the oracle: the same greedy reply, cut where the stop string starts
    stopped = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=40,
                                        temperature=0, stop=[stop])
    assert stopped.choices[0].message.content == free[:free.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=40, temperature=0, stop=stop, stream=True))
    assert streamed == free[:free.index(stop)]


def test_errors_come_in_openais_shape(tiny_server: ServerRunner) -> None:
    c = client(tiny_server)
    with pytest.raises(openai.NotFoundError) as unknown:
        c.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert unknown.value.code == "model_not_found" and "tiny" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as overflow:
        c.chat.completions.create(model="tiny", max_tokens=8,
                                  messages=[{"role": "user", "content": "x" * 3000}])
    assert overflow.value.code == "context_length_exceeded"
    assert "context of 2,048" in overflow.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=100_000)
    assert too_many.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad_value:
        c.chat.completions.create(model="tiny", messages=HELLO, temperature=9)
    assert bad_value.value.param == "temperature"
    malformed = httpx.post(f"{tiny_server.base_url}/chat/completions",
                           content=b'{"model": "tiny", "messages": [', timeout=10,
                           headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["message"] == "The request body is not valid JSON."
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(f"{tiny_server.base_url}/nothing-here", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    # the server is still fine
    assert c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).choices


def test_the_body_limit_and_closed_cors(tiny_shared: SharedHost) -> None:
    runner = serve(tiny_shared, max_body_bytes=2000)
    try:
        big = {"model": "tiny", "messages": [{"role": "user", "content": "y" * 5000}]}
        answer = httpx.post(f"{runner.base_url}/chat/completions", json=big, timeout=10)
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
        preflight = httpx.options(f"{runner.base_url}/chat/completions", timeout=10, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    finally:
        runner.stop()
    listed = serve(tiny_shared, cors_origins=("https://my.app",))
    try:
        ok = httpx.get(f"{listed.base_url}/models", timeout=10,
                       headers={"Origin": "https://my.app"})
        assert ok.headers["access-control-allow-origin"] == "https://my.app"
        other = httpx.get(f"{listed.base_url}/models", timeout=10,
                          headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        listed.stop()


def test_a_key_is_required_when_set_and_for_network_addresses(tiny_shared: SharedHost) -> None:
    with pytest.raises(ServerConfigError, match="API key"):
        ServerRunner(tiny_shared, ServerConfig(host="0.0.0.0", port=0)).start()
    runner = serve(tiny_shared, api_key="s3cret-key-123")
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            client(runner, api_key="wrong-key").models.list()
        assert refused.value.code == "invalid_api_key"
        no_header = httpx.get(f"{runner.base_url}/models", timeout=10)
        assert no_header.status_code == 401
        answer = client(runner, api_key="s3cret-key-123").chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=3)
        assert answer.choices[0].message.content
    finally:
        runner.stop()


def test_embeddings_are_refused_for_a_chat_model(tiny_server: ServerRunner) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(tiny_server).embeddings.create(model="tiny", input="hello")
    assert refused.value.code == "embeddings_unsupported"
    assert "no pooling" in refused.value.message


def test_embeddings_of_a_pooling_model_match_llama_cpp_python(tiny_path: Path,
                                                              tmp_path: Path) -> None:
    """The oracle: llama-cpp-python's own ``Llama.embed`` on the same file."""
    base = Base.of("tiny", tiny_path)
    pooled = tmp_path / "tiny-mean-pooling.gguf"
    pooled.write_bytes(base.rebuild([*base.kv_bytes(), encode_kv("llama.pooling_type",
                                                                 UINT32, 1)]))
    shared = SharedHost()
    try:
        load(shared, LoadSettings(str(pooled), n_ctx=512, n_threads=1))
        runner = serve(shared)
        try:
            texts = ["the quick brown fox", "a completely different sentence"]
            got = client(runner).embeddings.create(model="tiny-mean-pooling", input=texts)
            as_floats = httpx.post(f"{runner.base_url}/embeddings", timeout=30, json={
                "model": "tiny-mean-pooling", "input": texts[0]}).json()
        finally:
            runner.stop()
    finally:
        shared.shutdown()
    import llama_cpp

    reference = llama_cpp.Llama(str(pooled), embedding=True, n_ctx=512, n_threads=1,
                                pooling_type=1, verbose=False)
    try:
        for item, text in zip(got.data, texts, strict=True):
            expected = reference.embed(text, normalize=True)
            assert len(item.embedding) == len(expected) == 256
            cosine = sum(a * b for a, b in zip(item.embedding, expected, strict=True))
            assert cosine > 0.9999
        assert math.isclose(sum(v * v for v in as_floats["data"][0]["embedding"]), 1.0,
                            rel_tol=1e-4)
        assert got.usage.prompt_tokens > 0
    finally:
        reference.close()


@pytest.mark.slow
def test_the_embeddings_context_costs_what_the_plan_counts(smollm2: Path, tmp_path: Path
                                                           ) -> None:
    """Measured: the engine child's resident memory grows, on a whole-context text, by what
    ``memory.embeddings_bytes`` says (within 10%); a model without pooling counts nothing."""
    from app.core import memory
    from app.core.gguf_info import read_model_info
    from app.engine.host import ModelHost
    from app.engine.protocol import Embeddings

    assert memory.embeddings_bytes(read_model_info(smollm2), 1024) == 0  # a chat model
    base = Base.of("llama", smollm2)
    pooled = tmp_path / "smollm2-mean.gguf"
    pooled.write_bytes(base.rebuild([*base.kv_bytes(), encode_kv("llama.pooling_type",
                                                                 UINT32, 1)]))
    info = read_model_info(pooled)
    assert info.pooling_type == 1

    def rss(pid: int) -> int:
        with Path(f"/proc/{pid}/status").open() as status:
            return next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmRSS"))

    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(pooled), n_ctx=1024, n_threads=1))
        assert host.pid is not None
        before = rss(host.pid)
        host.embed([" ".join(["word"] * 1000)])
        event = None
        while not isinstance(event, Embeddings):
            event = host.poll(5.0)
            assert not hasattr(event, "message"), event
        grown = rss(host.pid) - before
    finally:
        host.shutdown()
    expected = memory.embeddings_bytes(info, 1024)
    assert abs(grown - expected) <= 0.1 * expected, (grown, expected)
    serving = memory.estimate(info, 1024, embeddings=True)
    assert serving.cpu.total - memory.estimate(info, 1024).cpu.total == expected


def test_the_server_survives_the_engine_being_killed(tiny_shared: SharedHost,
                                                     tiny_server: ServerRunner) -> None:
    c = client(tiny_server)
    old_pid = tiny_shared.pid()
    assert old_pid is not None
    started = threading.Event()

    def kill_when_generating() -> None:
        while tiny_shared.running is None or tiny_shared.running.tokens < 5:
            if started.wait(0.001):
                return
        os.kill(old_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_generating)
    killer.start()
    try:
        with pytest.raises(openai.InternalServerError) as crashed:
            c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1900)
    finally:
        started.set()
        killer.join()
    assert crashed.value.status_code == 503
    assert crashed.value.code == "engine_crashed"
    assert "The engine stopped unexpectedly" in crashed.value.message
    assert "SIGKILL" in crashed.value.message or "signal" in crashed.value.message
    # the next request reloads the model in a fresh engine and is answered
    answer = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=5)
    assert answer.choices[0].message.content
    assert tiny_shared.pid() not in (None, old_pid)
    assert json.loads(httpx.get(f"{tiny_server.base_url[:-3]}/health", timeout=5).text) == {
        "status": "ok"}
