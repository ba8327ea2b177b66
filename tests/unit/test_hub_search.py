"""Search and repo listings with the real huggingface-hub client against the local hub."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app.core.quant_types import name_in as quant_of
from app.core.quant_types import without_name
from app.hub.errors import HubNotFound, HubOffline
from app.hub.search import is_split, repo_files, search_models
from tests.helpers.fake_hub import FakeHub


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub()
    h.add("bartowski/Tiny-GGUF", "Tiny-Q8_0.gguf", b"a" * 800, downloads=50, likes=1)
    h.add("bartowski/Tiny-GGUF", "Tiny-Q4_K_M.gguf", b"b" * 500)
    h.add("bartowski/Tiny-GGUF", "Tiny-Q2_K-00001-of-00002.gguf", b"c" * 200)
    h.add("bartowski/Tiny-GGUF", "Tiny-Q2_K-00002-of-00002.gguf", b"d" * 100)
    h.add("bartowski/Tiny-GGUF", "mmproj-Tiny-f16.gguf", b"e" * 10)
    h.add("org/tiny-base", "model.safetensors", b"f" * 10, downloads=900, likes=3)
    h.add("org/other", "x-Q4_0.gguf", b"g" * 10, downloads=5)
    h.start()
    yield h
    h.stop()


def test_quant_from_file_names() -> None:
    assert quant_of("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("qwen2.5-7b-instruct-q5_k_m-00001-of-00002.gguf") == "Q5_K_M"
    assert quant_of("gemma-3-1b-it-IQ4_XS.gguf") == "IQ4_XS"
    assert quant_of("model-f16.gguf") == "F16"
    assert quant_of("model.gguf") is None
    assert without_name("SmolLM2-135M-Instruct.Q4_1") == "SmolLM2-135M-Instruct"
    assert without_name("tiny-F16") == "tiny" and without_name("plain") == "plain"


def test_search_sorted_by_downloads(hub: FakeHub) -> None:
    hits = search_models("tiny", endpoint=hub.endpoint)
    assert [h.repo_id for h in hits] == ["org/tiny-base", "bartowski/Tiny-GGUF"]
    assert hits[0].downloads == 900
    request = next(r for r in hub.requests if r.path == "/api/models")
    assert request.method == "GET"


def test_repo_files_grouped_by_quant(hub: FakeHub) -> None:
    files = repo_files("bartowski/Tiny-GGUF", endpoint=hub.endpoint)
    assert [q.quant for q in files.quants] == ["Q8_0", "Q4_K_M", "Q2_K"]
    q2 = files.quants[2]
    assert q2.files == ("Tiny-Q2_K-00001-of-00002.gguf", "Tiny-Q2_K-00002-of-00002.gguf")
    assert q2.size == 300 and is_split(q2.files)
    assert all(s is not None and len(s) == 64 for s in files.quants[0].sha256)
    assert not files.has_safetensors


def test_repo_without_gguf_offers_conversion(hub: FakeHub) -> None:
    files = repo_files("org/tiny-base", endpoint=hub.endpoint)
    assert files.quants == () and files.has_safetensors


def test_errors(hub: FakeHub) -> None:
    with pytest.raises(HubNotFound):
        repo_files("org/missing", endpoint=hub.endpoint)
    start = time.monotonic()
    with pytest.raises(HubOffline, match="cannot be reached"):
        search_models("x", endpoint="http://127.0.0.1:9")
    assert time.monotonic() - start < 5


def test_offline_mode_is_respected(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOffline, match="HF_HUB_OFFLINE"):
        search_models("tiny", endpoint=hub.endpoint)
