"""Conversations put aside on disk while another has their sequence (app.engine.kv_shelf), on
the real llama.cpp through the generator, with the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import kv_reuse
from app.core.sampling import Sampling
from app.engine.generation import Generator
from app.engine.kv_shelf import MIN_TOKENS, KvShelf
from app.engine.protocol import LoadSettings

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=24)
# the tiny model's vocabulary is bytes: a character a token
LONG = "A long conversation about rivers and the sea. " * 8  # ~370 tokens
OTHER = "Another conversation altogether. " * 10


@pytest.fixture
def gen(tiny_model: Path, tmp_path: Path) -> Iterator[Generator]:
    g = Generator(LoadSettings(str(tiny_model), n_ctx=2048, n_threads=2))
    g.shelf = KvShelf(tmp_path / "cache")
    yield g
    g.close()


def _reply(gen: Generator, text: str) -> tuple[list[int], str, int]:
    """(the prompt's tokens, the reply, how many prompt tokens came from the cache)."""
    tokens = gen.tokenize(text)
    out = gen.generate(tokens, GREEDY, on_text=lambda *_: True)
    return tokens, out.text, out.cached_tokens


def test_a_conversation_taken_back_is_brought_back_not_decoded_again(gen: Generator) -> None:
    assert gen.shelf is not None
    first, reply, _ = _reply(gen, LONG)
    assert len(first) >= MIN_TOKENS
    _reply(gen, OTHER)  # another conversation takes the sequence: the first is put aside
    assert len(gen.shelf.states) == 1 and gen.shelf.states[0].path.exists()
    held = gen.shelf.states[0].tokens
    # the prompt and the reply's tokens but the last sampled (never decoded)
    assert held[:len(first)] == first and len(held) == len(first) + GREEDY.max_tokens - 1
    going_on = LONG + reply + " And then?"
    _, again, cached = _reply(gen, going_on)
    # everything the sequence held for the first conversation came back; the shelf let go of it
    assert cached >= len(held) - 1 and gen.shelf.states[0].tokens != held
    # ... and the reply is the one the first conversation gets without the interruption
    gen.reset()
    _reply(gen, LONG)
    _, expected, kept = _reply(gen, going_on)
    assert kept == cached and again == expected


def test_a_state_that_does_not_load_is_decoded_again(gen: Generator) -> None:
    assert gen.shelf is not None
    _reply(gen, LONG)
    _reply(gen, OTHER)
    state = gen.shelf.states[0]
    state.path.write_bytes(state.path.read_bytes()[:1000])  # damaged on disk
    _, again, cached = _reply(gen, LONG + " And then?")
    assert cached == 0 and not state.path.exists()  # decoded whole; the broken state is gone
    gen.reset()
    _, expected, _ = _reply(gen, LONG + " And then?")
    assert again == expected


def test_short_conversations_are_not_put_aside(gen: Generator) -> None:
    assert gen.shelf is not None
    _reply(gen, "Hello.")
    _reply(gen, OTHER)
    assert gen.shelf.states == []


def test_the_shelf_keeps_the_most_recent_within_its_limits(tmp_path: Path) -> None:
    shelf = KvShelf(tmp_path, most=3)
    shelf.budget = 2500
    paths = []
    for i in range(5):
        path = shelf.new_path()
        path.write_bytes(b"x" * 1000)
        shelf.add(path, [i])
        paths.append(path)
    # at most 2,500 bytes: the two most recent remain
    assert [s.tokens for s in shelf.states] == [[3], [4]]
    assert [p.exists() for p in paths] == [False, False, False, True, True]
    shelf.close()
    assert not shelf.folder.exists()


def test_a_dead_process_shelf_is_removed_and_a_living_ones_is_not(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = tmp_path / f"kv-{int(child.stdout)}-1"  # that process has ended
    dead.mkdir()
    (dead / "0.state").write_bytes(b"old")
    living = tmp_path / f"kv-{os.getppid()}-1"
    living.mkdir()
    shelf = KvShelf(tmp_path)
    assert not dead.exists() and living.exists()
    assert not shelf.folder.exists()  # made when the first state goes on it
    shelf.new_path()
    assert shelf.folder.is_dir()
    shelf.close()


def test_a_state_that_cannot_be_written_is_forgotten(gen: Generator) -> None:
    """A shelf that cannot take a state (its folder gone, a full disk) costs the conversation
    a decode when it comes back, and nothing else."""
    assert gen.shelf is not None
    _reply(gen, LONG)
    gen.shelf.folder.parent.mkdir(parents=True, exist_ok=True)
    gen.shelf.folder.write_bytes(b"")  # a file where the shelf's folder should be made
    _, other, _ = _reply(gen, OTHER)
    assert other and gen.shelf.states == []
    tokens, again, cached = _reply(gen, LONG + " And then?")
    other_tokens = gen.tokenize(OTHER)
    shared = next(i for i, (a, b) in enumerate(zip(tokens, other_tokens, strict=False))
                  if a != b)
    # decoded again: only the opening it shares with the other may come from the cache, where
    # keeping it costs less than decoding it (app.core.kv_reuse)
    kept = shared if kv_reuse.worth_keeping(shared, len(tokens), **gen._shape) else 0
    assert cached == kept and again


def test_the_next_load_of_the_same_model_takes_the_conversations_over(
        tiny_model: Path, tmp_path: Path) -> None:
    """At unload the conversations still in the sequences are left for the next load with the
    same key: going on with one brings it back instead of decoding it."""
    settings = LoadSettings(str(tiny_model), n_ctx=2048, n_threads=2)
    first = Generator(settings)
    first.shelf = KvShelf(tmp_path, key="same")
    tokens, reply, _ = _reply(first, LONG)
    first.close()
    assert [p.name for p in tmp_path.iterdir()] == ["kv-left-same"]

    other = Generator(settings)
    other.shelf = KvShelf(tmp_path, key="another")  # other settings: nothing to take over
    assert other.shelf.states == []
    other.close()

    again = Generator(settings)
    try:
        again.shelf = KvShelf(tmp_path, key="same")
        assert len(again.shelf.states) == 1 and not (tmp_path / "kv-left-same").exists()
        going_on = LONG + reply + " And then?"
        _, text, cached = _reply(again, going_on)
        assert cached >= len(tokens) + GREEDY.max_tokens - 2  # the prompt and the reply came back
        again.reset()
        _reply(again, LONG)
        _, expected, _ = _reply(again, going_on)
        assert text == expected
    finally:
        again.close()


def test_a_left_shelf_that_cannot_be_read_is_removed(tmp_path: Path) -> None:
    left = tmp_path / "kv-left-same"
    left.mkdir()
    (left / "0.state").write_bytes(b"state")
    (left / "index.json").write_text("{not json")
    shelf = KvShelf(tmp_path, key="same")
    assert shelf.states == [] and list(tmp_path.iterdir()) == []


def test_forget_drops_the_kept_conversations_but_the_ones_being_answered(
        gen: Generator) -> None:
    assert gen.shelf is not None
    _reply(gen, LONG)
    _reply(gen, OTHER)  # LONG is on the shelf, OTHER in the sequence
    gen.forget()
    assert gen.shelf.states == [] and not gen.shelf.folder.exists() and gen.cached() == []
    _, _, cached = _reply(gen, LONG)
    assert cached == 0  # decoded again
    gen.forget(keep=[0])  # sequence 0 is being answered: it keeps its cache
    assert len(gen.cached()) >= len(LONG)


def test_a_state_larger_than_the_whole_shelf_is_let_go(gen: Generator) -> None:
    assert gen.shelf is not None
    gen.shelf.new_path()  # the folder made (and the budget measured) first
    gen.shelf.budget = 1000  # less than one state
    _reply(gen, LONG)
    _, other, _ = _reply(gen, OTHER)  # the first is written, then let go at once
    assert other and gen.shelf.states == [] and list(gen.shelf.folder.iterdir()) == []
