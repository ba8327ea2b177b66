"""Text generation on llama.cpp's C API: one model, one context, its KV cache kept between replies.

Why not llama-cpp-python's ``Llama.create_completion``: its streaming detokenizes the whole reply
again at every token (quadratic in the reply's length: a 3,000-token reply reached the UI at a
fifth of llama.cpp's decode rate), it copies the vocabulary's logits into Python for every token,
and it processes a conversation's history again from the start each turn. Here:

- the prompt is decoded in batches of ``n_batch`` with ``llama_decode``, logits for its last
  token only;
- sampling is llama.cpp's sampler chain, run in C (penalties, top-k, top-p, min-p, temperature,
  seed, grammar, logit biases); no logits cross into Python;
- each token's bytes go through an incremental UTF-8 decoder, which holds back a character split
  across tokens until it is whole, and stop strings are looked for in the text's tail only (text
  that could be the start of a stop string is held back until it is decided);
- the tokens whose keys and values are in the cache are remembered: a new prompt that starts
  the same way (the next turn of a conversation, a regenerated reply) decodes only what differs
  (``llama_memory_seq_rm`` drops the rest), and the reply says how many tokens it reused.

Runs inside the model host's child process (``app.engine.host_child``).
"""

from __future__ import annotations

import codecs
import ctypes
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.memory import flash_attention, flash_setting, scores_bytes
from app.core.sampling import Sampling
from app.engine import llama_log, load_params
from app.engine.protocol import LoadSettings
from app.engine.threadpool import ThreadPool

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
            "bf16": 30}
FLASH_ATTENTION = {"auto": -1, "off": 0, "on": 1}
PENALTY_LAST_N = 64  # llama.cpp's default window for repeat/presence/frequency penalties


class GenerationError(Exception):
    """The model could not be loaded or a reply could not be generated; the message says why."""


@dataclass(frozen=True)
class Outcome:
    """One reply's text and what it cost."""

    text: str
    finish_reason: str  # "stop" (end of turn or a stop string), "length", "stopped"
    prompt_tokens: int
    cached_tokens: int  # of the prompt, reused from the cache (not decoded again)
    generated_tokens: int  # sampled, the end-of-turn token included
    ttft_seconds: float  # from the call to the first text
    prompt_seconds: float  # decoding the prompt's new tokens
    generation_seconds: float  # from the first sampled token to the last


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string (they
    wait until the next token decides)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class Generator:
    """A loaded model with one context. Not thread-safe: one reply at a time."""

    def __init__(self, settings: LoadSettings,
                 progress: Callable[[float], None] | None = None) -> None:
        import llama_cpp

        self._ll = ll = llama_cpp
        llama_log.install()
        ll.llama_backend_init()
        mparams = load_params.model_params(rpc_servers=settings.rpc_servers)
        mparams.n_gpu_layers = settings.n_gpu_layers
        if progress is not None:
            def on_progress(fraction: float, _user: ctypes.c_void_p) -> bool:
                progress(float(fraction))
                return True

            self._progress = ll.llama_progress_callback(on_progress)  # kept alive
            mparams.progress_callback = self._progress
        self.model = ll.llama_model_load_from_file(settings.path.encode(), mparams)
        if not self.model:
            errors = [ln for ln in llama_log.recent_lines(30) if "error" in ln.lower()]
            reason = errors[-1].split(":", 1)[-1].strip() if errors else "llama.cpp refused it"
            raise GenerationError(f"The model could not be loaded: {reason}")
        from app.engine.runner import default_threads

        threads = settings.n_threads or default_threads()
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = settings.n_ctx
        cparams.n_batch = settings.n_batch
        cparams.n_ubatch = settings.n_ubatch
        cparams.n_threads = cparams.n_threads_batch = threads
        # 'auto' on a CPU-only load is off (app.core.memory.flash_attention says why); where
        # layers are offloaded it stays llama.cpp's auto (on where the device supports it)
        chosen = flash_setting(settings.flash_attn)
        if chosen is not None:
            flash = "on" if chosen else "off"
        elif flash_attention(None, settings.n_gpu_layers, settings.type_v or "f16",
                             scores_bytes=scores_bytes(int(ll.llama_model_n_head(self.model)),
                                                       settings.n_ctx, settings.n_ubatch),
                             weights_bytes=int(ll.llama_model_size(self.model))):
            flash = "auto"
        else:
            flash = "off"
        cparams.flash_attn_type = FLASH_ATTENTION[flash]
        if settings.type_k:
            cparams.type_k = KV_TYPES[settings.type_k]
        if settings.type_v:
            cparams.type_v = KV_TYPES[settings.type_v]
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            self.model = None
            raise GenerationError("llama.cpp could not create the context (not enough memory "
                                  f"for a context of {settings.n_ctx:,} tokens?)")
        # one pool of threads for the context's life (ggml would start one per token)
        self._pool: ThreadPool | None = ThreadPool(self.ctx, threads)
        self.settings = settings
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(ll.llama_n_ctx(self.ctx))
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(self.model))
        self.n_batch = settings.n_batch
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        self.cached: list[int] = []  # the tokens in the KV cache, positions 0…, sequence 0
        self._eog: list[int] | None = None

    # --- the vocabulary ---------------------------------------------------------------------

    def token_text(self, token: int) -> str:
        """A token's text as the vocabulary stores it (special tokens included)."""
        if token < 0:
            return ""
        raw = self._ll.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    @property
    def bos(self) -> int:
        return int(self._ll.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(self._ll.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(self._ll.llama_vocab_get_add_bos(self.vocab))

    def eog_tokens(self) -> list[int]:
        """Every token llama.cpp treats as the end of generation (computed once)."""
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab)
                         if self._ll.llama_vocab_is_eog(self.vocab, t)]
        return self._eog

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """``text``'s tokens; special tokens written in it (a template's markers) are parsed."""
        raw = text.encode("utf-8")
        n = len(raw) + 16
        for _ in range(2):
            buf = (self._ll.llama_token * n)()
            got = self._ll.llama_tokenize(self.vocab, raw, len(raw), buf, n, add_special, True)
            if got >= 0:
                return list(buf[:got])
            n = -got
        raise GenerationError("tokenization failed")

    def _piece(self, token: int) -> bytes:
        """A token's bytes as generated text (control tokens give none)."""
        buf = self._piece_buf
        n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    # --- the cache and decoding ---------------------------------------------------------

    def _decode(self, tokens: Sequence[int], start: int) -> None:
        """Decode ``tokens`` at positions ``start``…, in batches; logits for the last one."""
        ll, batch = self._ll, self._batch
        for offset in range(0, len(tokens), self.n_batch):
            part = tokens[offset:offset + self.n_batch]
            n = len(part)
            last = offset + n == len(tokens)
            for i, token in enumerate(part):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            if last:
                batch.logits[n - 1] = 1
            batch.n_tokens = n
            status = ll.llama_decode(self.ctx, batch)
            if status != 0:
                self.cached = list(self.cached[:start + offset])
                if status == 1:
                    raise GenerationError("The context is full: no room for these tokens.")
                raise GenerationError(f"llama.cpp could not decode (status {status}).")
            self.cached.extend(part)

    def _reuse(self, tokens: Sequence[int]) -> int:
        """Keep the cached tokens ``tokens`` starts with (at least one token is decoded again,
        for its logits); drop the rest from the cache. Returns how many are kept."""
        common = 0
        for cached, token in zip(self.cached, tokens, strict=False):
            if cached != token:
                break
            common += 1
        keep = min(common, len(tokens) - 1)
        memory = self._ll.llama_get_memory(self.ctx)
        if keep < len(self.cached) and not self._ll.llama_memory_seq_rm(memory, 0, keep, -1):
            # a cache that cannot drop a tail (recurrent models) starts again
            self._ll.llama_memory_clear(memory, True)
            keep = 0
        del self.cached[keep:]
        return keep

    def reset(self) -> None:
        """Forget the cache (the next prompt is decoded whole)."""
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)
        self.cached = []

    # --- sampling ---------------------------------------------------------------------

    def _sampler(self, s: Sampling) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())

        def add(sampler: Any) -> None:
            ll.llama_sampler_chain_add(chain, sampler)

        if s.ignore_eos:
            eog = self.eog_tokens()
            biases = (ll.llama_logit_bias * len(eog))()
            for i, token in enumerate(eog):
                biases[i].token, biases[i].bias = token, float("-inf")
            add(ll.llama_sampler_init_logit_bias(self.n_vocab, len(eog), biases))
        if s.grammar:
            grammar = ll.llama_sampler_init_grammar(self.vocab, s.grammar.encode(), b"root")
            if not grammar:
                ll.llama_sampler_free(chain)
                raise GenerationError("The grammar could not be parsed.")
            add(grammar)
        if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
            add(ll.llama_sampler_init_penalties(self.n_vocab, PENALTY_LAST_N, s.repeat_penalty,
                                                s.frequency_penalty, s.presence_penalty))
        if s.temperature <= 0:
            add(ll.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(ll.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(ll.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(ll.llama_sampler_init_min_p(s.min_p, 1))
        add(ll.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else random.getrandbits(32)
        add(ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    # --- a reply ---------------------------------------------------------------------

    def generate(self, tokens: Sequence[int], sampling: Sampling, *,
                 on_text: Callable[[str], bool],
                 should_stop: Callable[[], bool] = lambda: False) -> Outcome:
        """Continue ``tokens`` (a rendered prompt's tokens) until an end-of-generation token, a
        stop string, ``sampling.max_tokens``, the end of the context, or ``should_stop()``
        (checked before every token). ``on_text`` receives the reply's text as it becomes
        certain: whole characters, never the start of a stop string; it returns False to refuse
        a piece (the reader asked to stop meanwhile), which ends the reply without that piece
        or its token."""
        started = time.perf_counter()
        if not tokens:
            raise GenerationError("The prompt is empty.")
        if len(tokens) >= self.n_ctx:
            raise GenerationError(f"The prompt is {len(tokens):,} tokens, more than the "
                                  f"context of {self.n_ctx:,}.")
        sampler = self._sampler(sampling)
        try:
            reused = self._reuse(tokens)
            self._decode(tokens[reused:], reused)
            prompt_seconds = time.perf_counter() - started
            return self._reply(sampling, sampler, len(tokens), reused, started,
                               prompt_seconds, on_text, should_stop)
        finally:
            self._ll.llama_sampler_free(sampler)

    def _reply(self, s: Sampling, sampler: Any, n_prompt: int, reused: int, started: float,
               prompt_seconds: float, on_text: Callable[[str], bool],
               should_stop: Callable[[], bool]) -> Outcome:
        ll, ctx = self._ll, self.ctx
        is_eog = ll.llama_vocab_is_eog
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = tuple(x for x in s.stop if x)
        longest_stop = max((len(x) for x in stops), default=0)
        text, emitted, generated = "", 0, 0
        first_text = first_token = 0.0
        finish, by_stop_string = "length", False
        budget = min(s.max_tokens, self.n_ctx - n_prompt)

        def emit(upto: int) -> bool:
            """Hand over text[emitted:upto]; False when the reader refused it."""
            nonlocal emitted, first_text
            if upto > emitted:
                if not on_text(text[emitted:upto]):
                    return False
                if not first_text:
                    first_text = time.perf_counter()
                emitted = upto
            return True

        while generated < budget:
            if should_stop():
                finish = "stopped"
                break
            token = ll.llama_sampler_sample(sampler, ctx, -1)  # accepts it too
            generated += 1
            if not first_token:
                first_token = time.perf_counter()
            if is_eog(self.vocab, token) and not s.ignore_eos:
                finish = "stop"
                break
            before = len(text)
            text += decoder.decode(self._piece(token))
            upto = len(text)
            if stops:
                # a stop string can only end in the new text: look from where it could start
                found = _find_stop(text, stops, max(0, before - longest_stop + 1))
                if found is not None:
                    text = text[:found]
                    finish, by_stop_string = "stop", True
                    if not emit(len(text)):
                        finish = "stopped"
                    break
                upto -= held_back(text, stops)
            if not emit(upto):  # stopped while this piece waited for its reader: drop it
                generated -= 1
                finish, by_stop_string = "stopped", True
                break
            self._decode([token], len(self.cached))  # the next logits
        if not by_stop_string:  # what was held back (a split character, a stop's start) goes
            text += decoder.decode(b"", final=True)
            if not emit(len(text)):
                finish = "stopped"
        ended = time.perf_counter()
        return Outcome(
            text=text[:emitted], finish_reason=finish, prompt_tokens=n_prompt,
            cached_tokens=reused, generated_tokens=generated,
            ttft_seconds=(first_text or ended) - started, prompt_seconds=prompt_seconds,
            generation_seconds=ended - first_token if first_token else 0.0)

    def close(self) -> None:
        ll = self._ll
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        pool = getattr(self, "_pool", None)
        if pool is not None:  # detached before the context goes
            pool.close()
            self._pool = None
        if getattr(self, "ctx", None):
            ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            ll.llama_model_free(self.model)
            self.model = None


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop string begins in ``text[start:]``, or None."""
    found = [i for i in (text.find(stop, start) for stop in stops) if i >= 0]
    return min(found) if found else None

