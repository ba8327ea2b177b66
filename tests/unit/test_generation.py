"""The engine's generation on llama.cpp's C API, through the real model host child, checked
against llama-cpp-python's own generation loop (an independent implementation over the same
llama.cpp): greedy output, UTF-8 split across tokens, KV-cache reuse, stop strings, grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.core.sampling import Sampling
from app.engine.generation import GenerationError
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Token

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=64)
GREEDY_8 = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=8)
SEA = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
JAPANESE = "The Japanese word for cat is 猫. The Japanese word for dog is"


@pytest.fixture(scope="module")
def reference_llm(smollm2: Path) -> Iterator[Any]:
    """llama-cpp-python's Llama, loaded the engine's safe way."""
    import llama_cpp
    from llama_cpp import llama_cpp as low_level

    from app.engine import load_params

    defaults = low_level.llama_model_default_params
    low_level.llama_model_default_params = lambda: load_params.apply(defaults())
    try:
        yield llama_cpp.Llama(str(smollm2), n_ctx=2048, n_threads=2, flash_attn=True,
                              verbose=False)
    finally:
        low_level.llama_model_default_params = defaults


@pytest.fixture
def host(smollm2: Path) -> Iterator[ModelHost]:
    h = ModelHost()
    h.load_sync(LoadSettings(str(smollm2), n_ctx=2048, n_threads=2, flash_attn="on"))
    yield h
    h.shutdown()


def _complete(host: ModelHost, prompt: str, sampling: Sampling = GREEDY
              ) -> tuple[list[str], ReplyDone]:
    events = list(host.chat_stream((), sampling, prompt=prompt))
    done = events[-1]
    assert isinstance(done, ReplyDone)
    return [e.text for e in events if isinstance(e, Token)], done


def test_greedy_output_is_llama_cpp_pythons_for_64_tokens(host: ModelHost, reference_llm: Any
                                                          ) -> None:
    pieces, done = _complete(host, SEA)
    expected = reference_llm.create_completion(SEA, max_tokens=64, temperature=0.0,
                                               repeat_penalty=1.0)["choices"][0]["text"]
    assert done.metrics.generated_tokens == 64 and done.finish_reason == "length"
    assert done.text == expected and "".join(pieces) == expected


def test_characters_split_across_tokens_arrive_whole(host: ModelHost, reference_llm: Any
                                                     ) -> None:
    pieces, done = _complete(host, JAPANESE)
    expected = reference_llm.create_completion(JAPANESE, max_tokens=64, temperature=0.0,
                                               repeat_penalty=1.0)["choices"][0]["text"]
    assert done.text == expected == "".join(pieces)
    assert all("\ufffd" not in piece for piece in pieces)
    assert any("\u3040" <= ch <= "\u30ff" for ch in done.text)  # kana came out
    # ... and some of them were made of tokens that are not whole characters on their own
    vocab_tokens = reference_llm.tokenize(done.text.encode(), add_bos=False, special=False)
    partial = 0
    for token in vocab_tokens:
        try:
            reference_llm.detokenize([token]).decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    assert partial >= 2


def test_a_reply_cut_between_a_characters_tokens_ends_with_the_characters_before(
        host: ModelHost, reference_llm: Any) -> None:
    # llama-cpp-python's own greedy tokens for the prompt: the first count of them whose
    # bytes end inside a character
    prompt = reference_llm.tokenize(JAPANESE.encode(), add_bos=True, special=False)
    tokens: list[int] = []
    for token in reference_llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
        tokens.append(token)
        raw = reference_llm.detokenize(tokens)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            break
        assert len(tokens) < 64, "no token of the reply ends inside a character"
    reference_llm.reset()
    cut = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=len(tokens))
    pieces, done = _complete(host, JAPANESE, cut)
    assert done.finish_reason == "length" and done.metrics.generated_tokens == len(tokens)
    # the whole characters, and no replacement character for the one cut
    assert done.text == raw.decode("utf-8", "ignore") == "".join(pieces)
    assert "\ufffd" not in done.text


def test_a_regenerated_reply_reuses_the_prompt_and_equals_the_first(host: ModelHost) -> None:
    first = [ChatMessage("user", "Name three colours.")]
    reply = list(host.chat_stream(first, GREEDY))[-1]
    again = list(host.chat_stream(first, GREEDY))[-1]
    assert isinstance(reply, ReplyDone) and isinstance(again, ReplyDone)
    assert reply.metrics.cached_tokens == 0
    # every prompt token but the last came from the cache; the reply is token for token the same
    assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
    assert again.text == reply.text


def test_a_long_prompt_sharing_only_its_opening_with_the_cache_is_decoded_whole(
        host: ModelHost) -> None:
    """Keeping a few cached opening tokens would make each of the prompt's micro-batches attend
    to 256 more cells than they save (app.core.kv_reuse): the prompt is decoded whole. Its next
    turn keeps its cache."""
    history = ("The history of computing is a story of abstraction. Each generation built "
               "tools that hid the layer below. ") * 30  # some 600 tokens
    _, first = _complete(host, "You are a helpful assistant. Alpha. " + history, GREEDY_8)
    text = "You are a helpful assistant. Bravo. " + history
    _, other = _complete(host, text, GREEDY_8)
    assert first.metrics.prompt_tokens > 512  # more than one micro-batch
    assert other.metrics.cached_tokens == 0
    _, turn = _complete(host, text + other.text + " And then?", GREEDY_8)
    assert turn.metrics.cached_tokens >= other.metrics.prompt_tokens - 1  # the next turn


def test_the_next_turn_decodes_only_the_new_tokens_and_stays_close_to_a_fresh_evaluation(
        host: ModelHost, smollm2: Path) -> None:
    first = [ChatMessage("user", "Name three colours.")]
    reply = list(host.chat_stream(first, GREEDY))[-1]
    assert isinstance(reply, ReplyDone)
    second = [*first, ChatMessage("assistant", reply.text),
              ChatMessage("user", "And three animals?")]
    reused = list(host.chat_stream(second, GREEDY))[-1]
    assert isinstance(reused, ReplyDone)
    # the history, the first reply included, was not decoded again
    assert reused.metrics.cached_tokens >= reply.metrics.prompt_tokens + 16
    # The cached reply's keys and values were computed a token at a time while it was written;
    # a fresh evaluation computes them in one batch, and llama.cpp's results depend on the
    # batching in the last bits (llama-server's prompt cache shares this). The next-token
    # distribution must stay within a small KL divergence of the fresh one, same top token.
    import numpy as np

    from app.core import chat_template
    from app.core.gguf_info import read_model_info
    from app.engine.generation import Generator

    gen = Generator(LoadSettings(str(smollm2), n_ctx=2048, n_threads=2, flash_attn="on"))
    try:  # loaded as the host was, so its first reply is the host's
        template = read_model_info(smollm2).chat_template

        def render(messages: Sequence[ChatMessage]) -> str:
            return chat_template.render(
                template, [chat_template.Message(m.role, m.content) for m in messages],
                bos_token=gen.token_text(gen.bos), eos_token=gen.token_text(gen.eos))

        gen.generate(gen.tokenize(render(first)), GREEDY, on_text=lambda *_: True)
        tokens = gen.tokenize(render(second))

        def next_token_logprobs() -> np.ndarray[Any, np.dtype[np.float64]]:
            import llama_cpp

            raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(gen.ctx, -1),
                                        shape=(gen.n_vocab,)).astype(np.float64)
            logprobs: np.ndarray[Any, np.dtype[np.float64]] = (
                raw - raw.max() - np.log(np.exp(raw - raw.max()).sum()))
            return logprobs

        kept = gen._reuse(tokens)
        gen._decode(tokens[kept:], kept)
        reused_lp = next_token_logprobs()
        gen.reset()
        gen._decode(tokens, 0)
        fresh_lp = next_token_logprobs()
    finally:
        gen.close()
    assert kept == reused.metrics.cached_tokens
    kld = float(np.sum(np.exp(fresh_lp) * (fresh_lp - reused_lp)))
    assert kld < 0.05 and reused_lp.argmax() == fresh_lp.argmax()


def test_a_stop_string_ends_the_reply_and_is_never_streamed(host: ModelHost) -> None:
    free, _ = _complete(host, SEA)
    text = "".join(free)
    stop = text[20:26]  # a string the reply is known to contain
    assert stop.strip()
    pieces, done = _complete(host, SEA, Sampling(temperature=0.0, repeat_penalty=1.0,
                                                 max_tokens=64, stop=(stop,)))
    assert done.finish_reason == "stop"
    assert done.text == text[:text.index(stop)] == "".join(pieces)


def test_a_grammar_makes_the_reply_json(host: ModelHost) -> None:
    from llama_cpp.llama_grammar import JSON_GBNF

    prompt = ("<|im_start|>user\nDescribe a cat as JSON with keys name and age.<|im_end|>\n"
              "<|im_start|>assistant\n")
    _, done = _complete(host, prompt, Sampling(temperature=0.0, max_tokens=80,
                                               grammar=JSON_GBNF))
    assert done.finish_reason == "stop", done.text
    assert isinstance(json.loads(done.text), dict)


def test_sampling_with_a_seed_repeats(host: ModelHost) -> None:
    sampling = Sampling(temperature=0.9, max_tokens=24, seed=1234)
    _, a = _complete(host, SEA, sampling)
    _, b = _complete(host, SEA, sampling)
    _, c = _complete(host, SEA, Sampling(temperature=0.9, max_tokens=24, seed=4321))
    assert a.text == b.text != c.text


def test_a_reply_takes_the_sequence_that_keeps_its_step_in_one_micro_batch(
        tiny_model: Path) -> None:
    """Which sequence a new reply gets: the one its conversation's cache is in; else, while
    others run, the lowest free one (llama.cpp batches consecutive sequence ids together);
    else an empty one, never a cache it only shares a template's opening with."""
    from app.engine.generation import Generator

    gen = Generator(LoadSettings(str(tiny_model), n_ctx=256, n_threads=1, n_parallel=4))
    try:
        assert gen.n_seq == 4 and gen.n_ctx >= 256
        conversation = gen.tokenize("a conversation that goes on and on")
        outcome = gen.generate(conversation, GREEDY, on_text=lambda *_: True)
        assert outcome.generated_tokens > 0 and len(gen.cached(0)) > len(conversation)
        # a new prompt that shares only its first tokens with sequence 0 goes to an empty one
        other = conversation[:2] + gen.tokenize("something else entirely", add_special=False)
        assert gen.sequence_for(other) == 1
        # the next turn of the conversation finds its own cache, wherever the others run
        follow = gen.cached(0) + gen.tokenize(" and then?", add_special=False)
        assert gen.sequence_for(follow, busy=[1, 2]) == 0
        # while sequence 0 runs, a new reply takes sequence 1 (it holds another conversation)
        # rather than the empty 2: 0 and 1 then step in one micro-batch
        gen.generate(other, GREEDY, on_text=lambda *_: True)  # sequence 0's cache: other
        gen._caches[1] = list(follow)  # as if sequence 1 held the first conversation
        unrelated = gen.tokenize("a third prompt, unlike the others")
        assert gen.sequence_for(unrelated, busy=[0]) == 1
        assert gen.sequence_for(unrelated) == 2  # nothing runs: an empty one, caches kept
        with pytest.raises(GenerationError):
            gen.sequence_for(other, busy=range(4))
    finally:
        gen.close()


@pytest.mark.parametrize("n_batch", [512, 8])
def test_replies_stepped_together_equal_each_reply_alone(tiny_model: Path, n_batch: int
                                                         ) -> None:
    """Several replies in one batched decode per token, begun on out-of-order sequences and at
    different times, each give exactly the tokens they give alone; with a small batch the
    prompts are split across steps, next to the running reply's tokens."""
    from app.engine.generation import Generator

    gen = Generator(LoadSettings(str(tiny_model), n_ctx=512, n_threads=1, n_parallel=3,
                                 n_batch=n_batch, n_ubatch=n_batch))
    try:
        prompts = [gen.tokenize(f"prompt number {i} " * (2 * i + 2)) for i in range(3)]
        assert min(len(p) for p in prompts) > 2 * n_batch or n_batch > 100
        alone = []
        for p in prompts:
            gen.reset()
            alone.append(gen.generate(p, GREEDY, on_text=lambda *_: True).text)
        gen.reset()
        replies = [gen.begin(prompts[0], GREEDY, on_text=lambda *_: True, seq=2)]
        for _ in range(5):  # the first runs alone for a while, then the others join
            gen.step(replies)
        replies += [gen.begin(p, GREEDY, on_text=lambda *_: True, seq=s)
                    for p, s in ((prompts[1], 0), (prompts[2], 1))]
        while any(r.outcome is None for r in replies):
            gen.step(replies)
        assert [r.outcome.text for r in replies if r.outcome] == alone
        for reply in replies:  # each cache holds its prompt and the reply (but its last token)
            assert reply.outcome is not None
            assert len(gen.cached(reply.seq)) == reply.n_prompt + reply.outcome.generated_tokens - 1
    finally:
        gen.close()


def test_a_reply_written_in_other_tokens_than_its_text_gives_is_not_decoded_again(
        smollm2: Path) -> None:
    """Models often write a word in other tokens than the tokenizer gives it ('d' + 'ictions'
    for 'dictions'). The next turn's prompt, tokenized from the stored text, must still reuse
    the whole reply from the cache, in the tokens the model wrote."""
    from app.engine.generation import Generator

    gen = Generator(LoadSettings(str(smollm2), n_ctx=2048, n_threads=2))
    try:
        prompt = gen.tokenize(SEA)
        reply = "Her predictions came true."
        words = ("Her pre", "d", "ictions came true.")
        written = [t for part in words for t in gen.tokenize(part, add_special=False)]
        assert written != gen.tokenize(reply, add_special=False)  # not the tokenizer's tokens
        # the cache now holds the prompt and the reply as the model "wrote" it
        gen.generate([*prompt, *written], Sampling(temperature=0.0, max_tokens=1),
                     on_text=lambda *_: True)
        turn = "<|im_end|>\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n"
        tokens = gen.tokenize(SEA + reply + turn)
        assert tokens[:len(prompt) + len(written)] != [*prompt, *written]
        again = gen.generate(tokens, GREEDY_8, on_text=lambda *_: True)
        assert again.cached_tokens == len(prompt) + len(written)
        # only the new turn's tokens were decoded
        assert again.prompt_tokens - again.cached_tokens == len(gen.tokenize(turn, False))
        # ... and the reply is what a fresh evaluation of those tokens gives
        gen.reset()
        fresh = gen.generate([*prompt, *written, *gen.tokenize(turn, False)], GREEDY_8,
                             on_text=lambda *_: True)
        assert fresh.cached_tokens == 0 and fresh.text == again.text
    finally:
        gen.close()


@pytest.mark.parametrize("sampling", [
    Sampling(max_tokens=96, seed=3),  # the Chat page's defaults: repeat penalty 1.1, top-k 40
    Sampling(max_tokens=96, temperature=0.0, repeat_penalty=1.3),
    Sampling(max_tokens=96, seed=5, top_k=5, frequency_penalty=0.5, presence_penalty=0.5),
], ids=["defaults", "greedy", "frequency-presence"])
def test_penalties_on_the_top_candidates_sample_as_llama_cpps_chain(
        smollm2: Path, sampling: Sampling) -> None:
    """The engine keeps the top candidates before the penalties (they only lower the logits of
    the last 64 tokens) instead of looking all 49,152 up; the tokens must be those of llama.cpp's
    own order, penalties first over every candidate."""
    import llama_cpp.llama_cpp as ll

    from app.engine.generation import PENALTY_LAST_N, Generator

    def llama_cpps_chain(s: Sampling) -> object:
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        samplers = [ll.llama_sampler_init_penalties(gen.n_vocab, PENALTY_LAST_N,
                                                    s.repeat_penalty, s.frequency_penalty,
                                                    s.presence_penalty)]
        if s.temperature <= 0:
            samplers.append(ll.llama_sampler_init_greedy())
        else:
            samplers += [ll.llama_sampler_init_top_k(s.top_k), ll.llama_sampler_init_top_p(
                s.top_p, 1), ll.llama_sampler_init_min_p(s.min_p, 1),
                ll.llama_sampler_init_temp(s.temperature),
                ll.llama_sampler_init_dist(s.seed or 0)]
        for sampler in samplers:
            ll.llama_sampler_chain_add(chain, sampler)
        return chain

    gen = Generator(LoadSettings(str(smollm2), n_ctx=2048, n_threads=2))
    try:
        prompt = gen.tokenize(SEA)
        ours = gen.generate(prompt, sampling, on_text=lambda *_: True)
        gen.reset()
        gen._sampler = llama_cpps_chain  # type: ignore[method-assign]
        reference = gen.generate(prompt, sampling, on_text=lambda *_: True)
    finally:
        gen.close()
    assert ours.generated_tokens == reference.generated_tokens > 32
    assert ours.text == reference.text


def test_a_spliced_prompt_is_the_prompts_text_in_the_caches_tokens(smollm2: Path) -> None:
    """Over random replies written in other tokens than the tokenizer gives their text (tokens
    split in two vocabulary tokens that spell the same): the prompt that goes on from the cache
    spells exactly the prompt's text, starts with the cache's own tokens, and keeps the whole
    reply when the prompt's text goes on from it. (The tiny model's vocabulary is bytes only:
    its tokens cannot be written another way.)"""
    import random

    from app.engine.generation import Generator

    gen = Generator(LoadSettings(str(smollm2), n_ctx=2048, n_threads=1))
    rng = random.Random(7)
    words = ["river", "dictions", " ", "  ", "\n", "\n\n", "def", "(x)", "élan", "猫",
             "{'a': 1}", "predictions", "-", "```", "    return", "ünïcode", "42", "."]

    def spelled(tokens: Sequence[int]) -> bytes:
        return b"".join(gen._piece(t, True) for t in tokens)

    by_piece: dict[bytes, int] = {}
    for token in range(gen.n_vocab):
        by_piece.setdefault(gen._piece(token, True), token)

    def rewritten(tokens: Sequence[int]) -> list[int]:
        """``tokens`` with some split in two tokens that spell the same bytes."""
        out: list[int] = []
        for token in tokens:
            piece = gen._piece(token, True)
            splits = [(by_piece[piece[:i]], by_piece[piece[i:]]) for i in range(1, len(piece))
                      if piece[:i] in by_piece and piece[i:] in by_piece]
            out += rng.choice(splits) if splits and rng.random() < 0.5 else (token,)
        return out

    turn = "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
    head = gen.tokenize(SEA)
    whole = departed = 0
    try:
        for _ in range(60):
            reply = "".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
            canonical = gen.tokenize(SEA + reply)
            if canonical[:len(head)] != head:  # the reply's start merged with the template's
                continue
            written = rewritten(canonical[len(head):])
            gen._caches[0][:] = [*head, *written]  # the cache after the model wrote the reply
            edited = rng.random() < 0.3  # or a prompt that departs from the reply somewhere
            text = SEA + (reply[:len(reply) // 2] + "X" if edited else reply) + turn
            tokens = gen.tokenize(text)
            spliced, kept = gen._splice(tokens, 0)
            assert spelled(spliced) == spelled(tokens)
            assert list(spliced[:kept]) == gen._caches[0][:kept]
            assert kept >= len(head)
            if not edited:
                assert kept == len(head) + len(written)
                whole += 1
                departed += tokens[:kept] != gen._caches[0]
    finally:
        gen.close()
    assert whole >= 20 and departed >= 10  # the cases the test is about came up


def test_the_shared_start_of_two_token_lists_is_counted_as_token_by_token() -> None:
    import random

    from app.engine.generation import _common_prefix

    rng = random.Random(1)
    for _ in range(2000):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 400))]
        b: Sequence[int] = a[:rng.randrange(0, len(a) + 1)] + [
            rng.randrange(4) for _ in range(rng.randrange(0, 300))]
        if rng.random() < 0.3:
            b = tuple(b)  # a prompt's tokens may come as a tuple
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                        min(len(a), len(b)))
        assert _common_prefix(a, b) == _common_prefix(b, a) == expected
