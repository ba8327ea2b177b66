"""The embedded SmolLM2-135M through the server: real answers through the ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.protocol import LoadSettings
from app.engine.shared_host import SharedHost
from app.server.runner import ServerRunner
from tests.server.conftest import client, load, serve

pytestmark = pytest.mark.slow
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def smol_server(smollm2: Path) -> Iterator[tuple[ServerRunner, str]]:
    shared = SharedHost()
    try:
        load(shared, LoadSettings(str(smollm2), n_ctx=1024, n_threads=2))
        runner = serve(shared)
        yield runner, smollm2.stem
        runner.stop()
    finally:
        shared.shutdown()


def test_smollm2_answers_paris_streamed_and_not(smol_server: tuple[ServerRunner, str]) -> None:
    runner, model = smol_server
    c = client(runner)
    answer = c.chat.completions.create(model=model, messages=FRANCE, max_tokens=16,
                                       temperature=0)
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"  # it ended its turn itself
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=model, messages=FRANCE, max_tokens=16, temperature=0, stream=True) if ch.choices)
    assert streamed == answer.choices[0].message.content


def test_smollm2_follows_a_json_schema(smol_server: tuple[ServerRunner, str]) -> None:
    runner, model = smol_server
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 24}},
              "required": ["capital"], "additionalProperties": False}
    answer = client(runner).chat.completions.create(
        model=model, messages=FRANCE, max_tokens=40, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "capital", "schema": schema}})
    data = json.loads(answer.choices[0].message.content or "")
    assert set(data) == {"capital"} and "Paris" in data["capital"]
