"""A chat prompt tokenized reusing the last turn's tokens (app/core/prompt_tokens.py) is, token
for token, the prompt tokenized whole by llama.cpp: on SmolLM2's BPE vocabulary, the tiny
model's SentencePiece one, and a vocabulary whose special tokens overlap, over conversations
that grow, branch, interleave and hold special tokens' text in their messages."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from app.core import chat_template
from app.core.gguf_info import read_model_info
from app.engine.generation import Generator
from app.engine.protocol import LoadSettings
from tests.helpers.tiny_model import (
    CHATML_TEMPLATE,
    Vocabulary,
    byte_vocabulary,
    write_tiny_llama,
)

PIECES = ("the", "sea", "river", "mountain", " ", "  ", "\n", "\n\n", "\t", " \n", "., ", "!",
          "<|im_start|>", "<|im_end|>", "<|im_sta", "|>", "<", "user\n", "assistant",
          "猫", "é", "😀", "1234", "```py\nx = 1\n```", "<s>", "</s>", "\u3000")


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))


def _conversations(seed: int) -> Iterator[list[tuple[str, str]]]:
    """Message lists as a chat sends them: growing turn by turn, a reply regenerated, an
    earlier message edited (the conversation cut there), another conversation in between."""
    rng = random.Random(seed)
    talks: list[list[tuple[str, str]]] = [[], []]
    for _ in range(40):
        talk = talks[rng.random() < 0.25]  # now and then the other conversation
        move = rng.random()
        if move < 0.1 and talk:  # regenerate: the same messages again
            yield list(talk)
            continue
        if move < 0.2 and len(talk) > 2:  # edit-and-resend: cut at an earlier user message
            cut = rng.randrange(0, len(talk) - 1, 2)
            del talk[cut:]
        elif move < 0.3 and talk:  # a system message mid-conversation
            talk.append(("system", _text(rng)))
        elif talk:
            talk.append(("assistant", _text(rng)))
        elif rng.random() < 0.5:
            talk.append(("system", _text(rng)))
            continue
        talk.append(("user", _text(rng)))
        yield list(talk)


def _check(gen: Generator, template: str | None, seed: int) -> int:
    """Every prompt tokenized with reuse is the prompt tokenized whole; the tokens reused."""
    bos = gen.token_text(gen.bos) if gen.adds_bos else ""
    reused = 0
    for messages in _conversations(seed):
        prompt = chat_template.render(
            template, [chat_template.Message(role, text) for role, text in messages],
            bos_token=bos, eos_token=gen.token_text(gen.eos))
        if bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]  # as the engine does: llama.cpp adds it
        whole = gen.tokenize(prompt)
        assert gen.tokenize_prompt(prompt) == whole, (seed, messages)
        reused += gen.prompt_tokens_reused
    return reused


@pytest.fixture(scope="module")
def smol_gen(smollm2: Path) -> Iterator[Generator]:
    gen = Generator(LoadSettings(str(smollm2), n_ctx=512, n_threads=1))
    yield gen
    gen.close()


def test_smollm2_prompts_are_the_whole_prompts_tokens(smol_gen: Generator,
                                                      smollm2: Path) -> None:
    template = read_model_info(smollm2).chat_template
    assert smol_gen._prompts.reusable  # a BPE vocabulary, adding no end-of-sequence token
    reused = sum(_check(smol_gen, template, seed) for seed in range(12))
    assert smol_gen._prompts.marker is not None
    assert smol_gen._prompts.marker.text == "<|im_start|>"
    assert reused > 1000  # the turns did reuse: the test is about something


def test_the_tiny_models_sentencepiece_prompts_are_the_whole_prompts_tokens(
        tiny_model: Path) -> None:
    gen = Generator(LoadSettings(str(tiny_model), n_ctx=512, n_threads=1))
    try:
        assert gen._prompts.reusable and gen.adds_bos  # SentencePiece, BOS added
        reused = sum(_check(gen, CHATML_TEMPLATE, seed) for seed in range(12))
        assert reused > 1000
    finally:
        gen.close()


def _overlapping_vocabulary(add_eos: bool = False) -> Vocabulary:
    """The byte vocabulary with special tokens that overlap ChatML's markers: one reaching
    into a marker, and user-defined ones holding a marker with text on both sides (llama.cpp
    matches longer special tokens first: where a system message follows another message, the
    last one takes the marker's place), and a user-defined word."""
    return byte_vocabulary(extra=[("d|>\n<|im_st", gguf.TokenType.CONTROL),
                                  ("\n<|im_start|>system", gguf.TokenType.USER_DEFINED),
                                  ("user\n<|im_start|>ass", gguf.TokenType.USER_DEFINED),
                                  ("sea", gguf.TokenType.USER_DEFINED)], add_eos=add_eos)


def test_overlapping_special_tokens_never_change_the_tokens(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "overlapping.gguf", vocabulary=_overlapping_vocabulary())
    gen = Generator(LoadSettings(str(model), n_ctx=512, n_threads=1))
    try:
        reused = sum(_check(gen, CHATML_TEMPLATE, seed) for seed in range(12))
        assert gen._prompts.marker is not None
        assert gen._prompts.marker.text == "<|im_start|>"
        assert reused > 1000
    finally:
        gen.close()


def test_a_vocabulary_adding_an_end_token_tokenizes_whole(tmp_path: Path) -> None:
    # the tail tokenized alone would lack the EOS: no reuse
    model = write_tiny_llama(tmp_path / "eos.gguf", vocabulary=_overlapping_vocabulary(True))
    gen = Generator(LoadSettings(str(model), n_ctx=512, n_threads=1))
    try:
        assert not gen._prompts.reusable
        assert _check(gen, CHATML_TEMPLATE, 0) == 0
    finally:
        gen.close()


def test_deleting_conversations_forgets_their_prompts(smol_gen: Generator, smollm2: Path) -> None:
    template = read_model_info(smollm2).chat_template
    prompt = chat_template.render(template, [chat_template.Message("user", "Hi there")])
    follow = chat_template.render(template, [chat_template.Message("user", "Hi there"),
                                             chat_template.Message("assistant", "Hello!"),
                                             chat_template.Message("user", "And you?")])
    smol_gen.tokenize_prompt(prompt)
    smol_gen.tokenize_prompt(follow)
    assert smol_gen.prompt_tokens_reused > 0
    smol_gen.forget()
    assert smol_gen.tokenize_prompt(follow) == smol_gen.tokenize(follow)
    assert smol_gen.prompt_tokens_reused == 0


def test_prompts_without_control_tokens_stop_being_searched_for_a_marker(tiny_model: Path
                                                                         ) -> None:
    from app.core.prompt_tokens import MARKER_LOOKS

    gen = Generator(LoadSettings(str(tiny_model), n_ctx=512, n_threads=1))
    try:
        prompts = gen._prompts
        for i in range(MARKER_LOOKS + 3):  # raw completions: plain text
            text = f"Once upon a time, {i} rivers ran to the sea."
            assert gen.tokenize_prompt(text) == gen.tokenize(text)
        assert prompts.marker is None and prompts._looks == MARKER_LOOKS
    finally:
        gen.close()


def test_the_shared_start_of_two_prompts_is_counted_as_character_by_character() -> None:
    from app.core.prompt_tokens import shared_start

    rng = random.Random(2)
    for _ in range(2000):
        a = "".join(rng.choice("ab猫") for _ in range(rng.randrange(0, 300)))
        b = a[:rng.randrange(0, len(a) + 1)] + "".join(
            rng.choice("ab猫") for _ in range(rng.randrange(0, 200)))
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                        min(len(a), len(b)))
        assert shared_start(a, b) == shared_start(b, a) == expected
