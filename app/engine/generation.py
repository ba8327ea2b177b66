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
  (``llama_memory_seq_rm`` drops the rest), and the reply says how many tokens it reused;
  where the model wrote its reply in other tokens than the tokenizer gives the stored text,
  the cache's own tokens stand in for them (``Generator._splice``);
- a prompt whose every token is cached, the last decode having given its last token's logits
  (a read-ahead of the very message sent, ``Chat.read_ahead``), samples from those logits: no
  decode before the first token (``Generator._logits``);
- a sequence another conversation takes is put aside on disk first, and brought back when its
  conversation goes on (``app.engine.kv_shelf``);
- penalties run on the top candidates only, not on the whole vocabulary (``_sampler``);
- a reply generated alone runs its decode-and-sample loop in C where that was built
  (``Generator.run``, ``app.engine.token_loop``), coming back to Python for its text.

Runs inside the model host's child process (``app.engine.host_child``).
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core import kv_reuse
from app.core.memory import flash_attention, flash_setting, scores_bytes
from app.core.prompt_tokens import PromptTokens, Special, shared_start
from app.core.sampling import Sampling
from app.engine import kv_shelf, llama_log, load_params, token_loop
from app.engine.protocol import LoadSettings
from app.engine.threadpool import ThreadPool

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
            "bf16": 30}
FLASH_ATTENTION = {"auto": -1, "off": 0, "on": 1}
log = logging.getLogger(__name__)
PENALTY_LAST_N = 64  # llama.cpp's default window for repeat/presence/frequency penalties


class GenerationError(Exception):
    """The model could not be loaded or a reply could not be generated; the message says why."""


class DecodeError(GenerationError):
    """``llama_decode`` failed for a batch; ``seqs`` are the sequences that were in it (the
    others are untouched); ``code`` is "context_length" when there was no room left."""

    def __init__(self, message: str, seqs: Iterable[int], code: str = "") -> None:
        super().__init__(message)
        self.seqs = frozenset(seqs)
        self.code = code


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
    """A loaded model with one context of ``n_parallel`` sequences (``LoadSettings``), each
    with its own KV cache: ``generate`` runs one reply on sequence 0; ``begin`` and ``step``
    run several at once, one batched decode per token for all. Not thread-safe."""

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
        n_seq = max(1, settings.n_parallel)
        cparams = ll.llama_context_default_params()
        # each sequence gets the whole context: its own KV stream of n_ctx cells (not one
        # cache shared by all, where a long reply could take a neighbour's room)
        cparams.n_ctx = settings.n_ctx * n_seq
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False
        cparams.n_batch = max(settings.n_batch, n_seq)
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
        self.n_seq = n_seq
        self.n_ctx = int(ll.llama_n_ctx_seq(self.ctx))  # one sequence's context
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(self.model))
        self.n_batch = max(settings.n_batch, n_seq)
        # what kv_reuse.worth_keeping weighs a cached prefix by
        self._shape = {"n_params": int(ll.llama_model_n_params(self.model)),
                       "n_embd": int(ll.llama_model_n_embd(self.model)),
                       "n_layer": int(ll.llama_model_n_layer(self.model)),
                       "n_ubatch": min(settings.n_ubatch, self.n_batch)}
        self._batch = batch = ll.llama_batch_init(self.n_batch, 0, 1)
        # the batch's arrays, looked up once (each ctypes field access makes a new object,
        # thousands of times a second on a small model); every token has one sequence id
        self._b_token, self._b_pos, self._b_logits = batch.token, batch.pos, batch.logits
        self._b_seq = [batch.seq_id[i] for i in range(self.n_batch)]
        for i in range(self.n_batch):
            batch.n_seq_id[i] = 1
        self._piece_buf = ctypes.create_string_buffer(256)
        # per sequence: the tokens in its KV cache (positions 0…), and when it was last used
        self._caches: list[list[int]] = [[] for _ in range(n_seq)]
        self._used = [0] * n_seq
        self._clock = itertools.count(1)
        # per sequence, the logits the context's last decode gave: (the sequence's cached
        # length then, the batch index to sample them at). Any decode replaces them all; a
        # cache is only cut (then decoded) or grown by decoding, so an entry is stale only
        # where a state brought back from the shelf replaced the cache (_unshelve drops it).
        self._logits: dict[int, tuple[int, int]] = {}
        self._eog: list[int] | None = None
        # where sequences are put aside while other conversations use them (set by the host)
        self.shelf: kv_shelf.KvShelf | None = None
        self._prompts = self._prompt_tokens()

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

    def tokenize_prompt(self, text: str) -> list[int]:
        """A chat prompt's tokens, as ``tokenize(text)`` gives them, reusing an earlier
        prompt's up to a special token both share (app.core.prompt_tokens): a turn tokenizes
        its new messages, not the conversation."""
        return self._prompts(text)

    @property
    def prompt_tokens_reused(self) -> int:
        """Of the last ``tokenize_prompt``: tokens taken from an earlier prompt."""
        return self._prompts.reused_tokens

    def _prompt_tokens(self) -> PromptTokens:
        ll = self._ll
        wanted = (ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_USER_DEFINED
                  | ll.LLAMA_TOKEN_ATTR_UNKNOWN)  # what llama.cpp's partition matches
        specials = []
        readable = True
        get_attr, get_text = ll.llama_vocab_get_attr, ll.llama_vocab_get_text
        for token in range(self.n_vocab):  # 16 ms for SmolLM2's 49,152
            attr = get_attr(self.vocab, token)
            if attr & wanted:
                raw = get_text(self.vocab, token) or b""
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # it could match inside a character: no reuse
                    readable = False
                    continue
                specials.append(Special(token, text, bool(attr & ll.LLAMA_TOKEN_ATTR_CONTROL),
                                        bool(attr & ll.LLAMA_TOKEN_ATTR_LSTRIP)))
        kind = int(ll.llama_vocab_type(self.vocab))
        reusable = (readable and kind in (ll.LLAMA_VOCAB_TYPE_SPM, ll.LLAMA_VOCAB_TYPE_BPE)
                    and not ll.llama_vocab_get_add_eos(self.vocab))
        return PromptTokens(self.tokenize, specials, reusable=reusable)

    def _piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes as generated text (control tokens give none), or with ``special``
        as written in a prompt (a control token's text included)."""
        buf = self._piece_buf
        n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    # --- the cache and decoding ---------------------------------------------------------

    def cached(self, seq: int = 0) -> list[int]:
        """The tokens in sequence ``seq``'s KV cache, positions 0… (a copy)."""
        return list(self._caches[seq])

    def _decode(self, tokens: Sequence[int], start: int, seq: int = 0) -> None:
        """Decode ``tokens`` at positions ``start``… of ``seq``, in batches; logits for the last
        one."""
        cache = self._caches[seq]
        for offset in range(0, len(tokens), self.n_batch):
            part = tokens[offset:offset + self.n_batch]
            self._fill(0, part, start + offset, seq, offset + len(part) == len(tokens))
            self._batch.n_tokens = len(part)
            self._run_batch([seq])
            cache.extend(part)

    def _fill(self, at: int, tokens: Sequence[int], pos: int, seq: int, logits: bool) -> None:
        """Put ``tokens`` (positions ``pos``… of ``seq``) in the batch from index ``at``; the
        last one gives logits when ``logits`` is set."""
        token_at, pos_at, seq_at, logits_at = (self._b_token, self._b_pos, self._b_seq,
                                               self._b_logits)
        for i, token in enumerate(tokens, at):
            token_at[i] = token
            pos_at[i] = pos + i - at
            seq_at[i][0] = seq
            logits_at[i] = 0
        if logits:
            logits_at[at + len(tokens) - 1] = 1

    def _run_batch(self, seqs: Sequence[int]) -> None:
        """``llama_decode`` the batch as filled; on failure the sequences in it lose what the
        batch added to their cache and GenerationError says why."""
        self._logits.clear()
        status = self._ll.llama_decode(self.ctx, self._batch)
        if status != 0:
            self._decode_failed(status, seqs)

    def _decode_failed(self, status: int, seqs: Sequence[int], fail: bool = True) -> None:
        """After ``llama_decode`` returned ``status``: drop what it left in ``seqs``' caches
        beyond the tokens known there, and (with ``fail``) raise DecodeError."""
        memory = self._ll.llama_get_memory(self.ctx)
        for seq in set(seqs):
            self._ll.llama_memory_seq_rm(memory, seq, len(self._caches[seq]), -1)
        if not fail:
            return
        if status == 1:
            raise DecodeError("The context is full: no room for these tokens.", seqs,
                              "context_length")
        raise DecodeError(f"llama.cpp could not decode (status {status}).", seqs)

    def _splice(self, tokens: Sequence[int], seq: int = 0) -> tuple[Sequence[int], int]:
        """``tokens`` as sequence ``seq``'s cache can best continue them, and how many of their
        leading tokens the cache holds (``_splice_onto``)."""
        return self._splice_onto(self._caches[seq], tokens)

    def _splice_onto(self, cache: Sequence[int], tokens: Sequence[int]
                     ) -> tuple[Sequence[int], int]:
        """``tokens`` as a cache holding ``cache`` can best continue them, and how many of
        their leading tokens it holds.

        A model often writes a word in other tokens than the tokenizer would give its text
        ('d' + 'ictions' where the tokenizer has 'dict' + 'ions'): then the next turn's prompt,
        tokenized from the stored reply, leaves the cache inside that reply, and all of it
        after that point would be decoded again (7 of 18 SmolLM2 replies, one of them 10 tokens
        into 300). Where the cache spells the same text as the prompt up to a point where both
        have a token boundary, the cache's tokens stand in for the prompt's before it, and the
        prompt's own tokens follow: the same text, in the tokens the model wrote itself. The
        furthest such point is taken (as a rule the reply's end). A fresh evaluation (another
        sequence, a restart) decodes the tokenizer's tokens instead: the same text, the
        next-token distribution a little apart."""
        shared = _common_prefix(cache, tokens)
        if shared == len(cache) or shared == len(tokens):
            return tokens, shared
        piece = self._piece
        written = bytearray()  # the cache's text after the shared tokens, as far as needed
        ends = {0: shared}  # where its tokens end in that text: the cache index after each
        at = shared  # the next cache token to spell
        offset = 0  # where tokens[j] begins in the text
        best = (shared, shared)
        for j in range(shared, len(tokens)):
            if offset in ends:
                best = (ends[offset], j)
            spelled = piece(tokens[j], True)
            end = offset + len(spelled)
            while len(written) < end and at < len(cache):
                written += piece(cache[at], True)
                at += 1
                ends[len(written)] = at
            if written[offset:end] != spelled:
                break
            offset = end
        kept, resume = best
        if kept <= shared:
            return tokens, shared
        return [*cache[:kept], *tokens[resume:]], kept

    def _swap(self, tokens: Sequence[int], seq: int) -> tuple[Sequence[int], int]:
        """Before sequence ``seq`` takes ``tokens``: put what it holds on the shelf when the
        prompt does not go on from it (another conversation: it shares less than half), and
        bring back the shelved state the prompt goes on from furthest, when that is at least
        MIN_TOKENS further than the sequence would keep (``app.engine.kv_shelf``). Returns
        ``_splice`` of ``tokens`` onto the sequence as it is then."""
        shelf = self.shelf
        assert shelf is not None
        cache = self._caches[seq]
        spliced = self._splice_onto(cache, tokens)
        kept = spliced[1]
        best, best_kept = None, kept + kv_shelf.MIN_TOKENS - 1
        for state in shelf.states:
            shared = self._splice_onto(state.tokens, tokens)[1]
            if shared > best_kept:
                best, best_kept = state, shared
        if 2 * kept < len(cache) and len(cache) >= kv_shelf.MIN_TOKENS:
            self._shelve(seq)  # (the sequence itself is unchanged)
        if best is None:
            return spliced
        self._unshelve(best, seq)
        return self._splice(tokens, seq)

    def _shelve(self, seq: int) -> None:
        """Write sequence ``seq``'s state to the shelf (a failure is logged and forgotten)."""
        shelf = self.shelf
        assert shelf is not None
        cache = self._caches[seq]
        try:
            path = shelf.new_path()
        except OSError as exc:
            log.warning("A conversation's cache could not be put aside (%s)", exc)
            return
        part = path.with_suffix(".part")
        tokens = (self._ll.llama_token * len(cache))(*cache)
        started = time.perf_counter()
        written = self._ll.llama_state_seq_save_file(self.ctx, str(part).encode(), seq, tokens,
                                                     len(cache))
        try:
            if not written:
                raise OSError("llama.cpp could not write it")
            part.replace(path)
            size = path.stat().st_size
            shelf.add(path, list(cache))  # which may let it go at once, when it is too big
        except OSError as exc:
            log.warning("A conversation's cache could not be put aside (%s); it will be "
                        "decoded again when it goes on", exc)
            part.unlink(missing_ok=True)
            return
        log.info("put aside %d tokens of sequence %d (%.0f MB, %.2f s)", len(cache), seq,
                 size / 1e6, time.perf_counter() - started)

    def _unshelve(self, state: kv_shelf.Shelved, seq: int) -> None:
        """Load a shelved state into sequence ``seq`` in place of what it holds; the state
        leaves the shelf. A state that does not load leaves the sequence empty."""
        shelf = self.shelf
        assert shelf is not None
        ll, cache = self._ll, self._caches[seq]
        memory = ll.llama_get_memory(self.ctx)
        ll.llama_memory_seq_rm(memory, seq, -1, -1)
        cache.clear()
        self._logits.pop(seq, None)
        started = time.perf_counter()
        out = (ll.llama_token * len(state.tokens))()
        count = ctypes.c_size_t(0)
        read = ll.llama_state_seq_load_file(self.ctx, str(state.path).encode(), seq, out,
                                            len(out), ctypes.byref(count))
        shelf.remove(state)
        if read and count.value == len(state.tokens) and list(out) == state.tokens:
            cache.extend(state.tokens)
            log.info("brought back %d tokens into sequence %d (%.2f s)", len(cache), seq,
                     time.perf_counter() - started)
        else:
            ll.llama_memory_seq_rm(memory, seq, -1, -1)
            log.warning("A conversation's cache put aside could not be loaded; it is decoded "
                        "again")

    def _reuse(self, tokens: Sequence[int], seq: int = 0) -> int:
        """Keep the cached tokens ``tokens`` starts with in ``seq`` (at least one token is
        decoded again, for its logits, unless the cache is the whole prompt and the last decode
        gave its last token's: ``_logits``), unless decoding the prompt whole costs less
        (``kv_reuse.worth_keeping``: a few shared opening tokens before a long prompt); drop
        the rest from the cache. Returns how many are kept."""
        cache = self._caches[seq]
        shared = _common_prefix(cache, tokens)
        if shared == len(tokens) == len(cache) and self._logits.get(seq, (-1,))[0] == shared:
            return shared  # the last decode gave the last token's logits: sampled from them
        keep = min(shared, len(tokens) - 1)
        if keep and not kv_reuse.worth_keeping(keep, len(tokens), **self._shape):
            keep = 0
        memory = self._ll.llama_get_memory(self.ctx)
        if keep < len(cache) and not self._ll.llama_memory_seq_rm(memory, seq, keep, -1):
            # a cache that cannot drop a tail (recurrent models) starts again
            self._ll.llama_memory_seq_rm(memory, seq, -1, -1)
            keep = 0
        del cache[keep:]
        return keep

    def forget(self, keep: Iterable[int] = ()) -> None:
        """Drop what every sequence but ``keep`` holds, and every shelved state."""
        kept = set(keep)
        memory = self._ll.llama_get_memory(self.ctx)
        for seq, cache in enumerate(self._caches):
            if seq not in kept and cache:
                self._ll.llama_memory_seq_rm(memory, seq, -1, -1)
                cache.clear()
        if self.shelf is not None:
            self.shelf.close()
        self._prompts.clear()

    def reset(self) -> None:
        """Forget every sequence's cache (the next prompt is decoded whole)."""
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)
        for cache in self._caches:
            cache.clear()

    def sequence_for(self, tokens: Sequence[int], busy: Iterable[int] = ()) -> int:
        """The free sequence to continue ``tokens`` on: one whose cache they continue (they
        share at least half of it: the same conversation's last turn, a regenerated reply),
        the longest such. Else, while other replies run, the lowest free one: llama.cpp
        decodes a step's tokens in one micro-batch only for consecutive sequence ids (its
        ``split_equal``), so a gap costs a second pass over the weights at every token. Else
        an empty one, else the one used longest ago. A prompt that only shares a template's
        opening with a cache does not take that cache's place, except for the gap rule: while
        others run, closing a gap (every step faster for everyone running) is put before
        keeping an idle conversation's cache (its next turn decodes its history again). Raises
        GenerationError when every sequence is busy."""
        taken = set(busy)
        free = [s for s in range(self.n_seq) if s not in taken]
        if not free:
            raise GenerationError(f"All {self.n_seq} sequences are generating.")

        def preference(seq: int) -> tuple[int, bool, bool, int]:
            cache = self._caches[seq]
            common = self._splice(tokens, seq)[1]
            return (common if cache and 2 * common >= len(cache) else 0,
                    bool(taken) and seq == free[0], not cache, -self._used[seq])

        return max(free, key=preference)

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
            keep = 1 if s.temperature <= 0 else s.top_k
            if keep > 0 and s.repeat_penalty >= 1.0 and min(s.presence_penalty,
                                                            s.frequency_penalty) >= 0:
                # llama.cpp's penalties look every candidate up in a hash map: 0.24 ms a token
                # over SmolLM2's 49,152, as long as the rest of sampling. Penalties that only
                # lower the logits of the last PENALTY_LAST_N tokens leave the top ``keep``
                # after them among the top keep + PENALTY_LAST_N before them: keeping those
                # first gives the same candidates, values and order, so the same token.
                add(ll.llama_sampler_init_top_k(keep + PENALTY_LAST_N))
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

    # --- replies ---------------------------------------------------------------------

    def begin(self, tokens: Sequence[int], sampling: Sampling, *,
              on_text: Callable[[str, int], bool],
              should_stop: Callable[[], bool] = lambda: False, seq: int = 0) -> Reply:
        """Start a reply continuing ``tokens`` (a rendered prompt's tokens) on sequence
        ``seq``; ``step`` advances it. It ends at an end-of-generation token, a stop string,
        ``sampling.max_tokens``, the end of the sequence's context, or ``should_stop()``
        (checked before every token). ``on_text`` receives the reply's text as it becomes
        certain, with how many tokens it is the text of: whole characters, never the start of a
        stop string; it returns False to refuse a piece (the reader asked to stop meanwhile),
        which ends the reply without that piece or its tokens. The caller must ``release`` a
        reply it abandons before its end."""
        started = time.perf_counter()
        if not tokens:
            raise GenerationError("The prompt is empty.")
        if not 0 <= seq < self.n_seq:
            raise GenerationError(f"There is no sequence {seq}.")
        spliced = self._swap(tokens, seq) if self.shelf is not None else self._splice(tokens, seq)
        tokens = spliced[0]
        if len(tokens) >= self.n_ctx:
            raise GenerationError(f"The prompt is {len(tokens):,} tokens, more than the "
                                  f"context of {self.n_ctx:,}.")
        sampler = self._sampler(sampling)
        reused = self._reuse(tokens, seq)
        self._used[seq] = next(self._clock)
        reply = Reply(self, seq, tokens, reused, sampling, sampler, started, on_text,
                      should_stop)
        if reused == len(tokens):  # nothing to decode: the first token from the kept logits
            reply.advance(self._logits[seq][1])
        return reply

    def step(self, replies: Sequence[Reply]) -> None:
        """One ``llama_decode`` for the unfinished ``replies``: each generating reply's last
        token, then prompts in order, as much of them as the batch holds; then the next token
        of every reply whose tokens are all decoded. A reply that has ended has ``outcome``."""
        live = []
        for reply in replies:
            if reply.outcome is None and reply.prompting and reply.should_stop():
                reply.finish("stopped")  # a long prompt stops without decoding the rest
            if reply.outcome is None:
                live.append(reply)
        if not live:
            return
        if len(live) > 1:
            # generating replies first (a token each), in sequence order: llama.cpp puts
            # consecutive sequences with as many tokens each in one micro-batch
            live.sort(key=lambda r: (r.prompting, r.seq))
        n, taken = 0, []
        for reply in live:
            take = min(len(reply.pending), self.n_batch - n)
            if take <= 0:
                continue
            last = take == len(reply.pending)
            self._fill(n, reply.pending[:take], reply.pos, reply.seq, last)
            taken.append((reply, take, n + take - 1 if last else -1))
            n += take
        self._batch.n_tokens = n
        self._run_batch([r.seq for r, _, _ in taken])
        for reply, take, index in taken:
            cache = self._caches[reply.seq]
            cache.extend(reply.pending[:take])
            reply.pos += take
            del reply.pending[:take]
            if index >= 0:
                self._logits[reply.seq] = (len(cache), index)
        for reply, _, index in taken:
            if index >= 0:
                reply.advance(index)

    def run(self, reply: Reply, pace: token_loop.Pace) -> None:
        """Go on with ``reply``, generating alone, in C (``app.engine.token_loop``) until it
        ends or ``pace`` wants Python back; then its tokens' text is handed over as ``step``
        would have, in one piece. The same tokens as ``step`` gives; Stop is ``pace``'s stop
        slot, checked before every token (``reply.should_stop`` is not called). Where the C
        loop is not built, or the reply is still in its prompt, this is ``step([reply])``."""
        if reply.outcome is not None:
            return
        if reply.prompting or len(reply.pending) != 1 or not token_loop.available():
            self.step([reply])
            return
        token = reply.pending[0]
        self._logits.clear()  # the loop decodes
        chunk = token_loop.run(self.ctx, reply._sampler, self.vocab, token=token,
                               pos=reply.pos, seq=reply.seq,
                               budget=reply.budget_left, ignore_eog=reply.sampling.ignore_eos,
                               pace=pace)
        self._caches[reply.seq].extend([token, *chunk.tokens][:chunk.decoded])
        reply.pos += chunk.decoded
        reply.pending = []
        # their text is handed over before a failed decode's error, as step hands a token's
        # text over before it decodes that token
        reply.take(chunk.tokens)
        if chunk.end is token_loop.End.ERROR:
            self._decode_failed(chunk.status, [reply.seq], fail=reply.outcome is None)
        if reply.outcome is None and chunk.end is token_loop.End.STOP:
            reply.finish("stopped")

    def generate(self, tokens: Sequence[int], sampling: Sampling, *,
                 on_text: Callable[[str, int], bool],
                 should_stop: Callable[[], bool] | None = None) -> Outcome:
        """One reply on sequence 0, from start to end (``begin`` says how it ends). Without
        ``should_stop`` its tokens after the first come from the C loop (``run``), where that
        is built."""
        reply = self.begin(tokens, sampling, on_text=on_text,
                           should_stop=should_stop or (lambda: False))
        alone = token_loop.Pace(wait=token_loop.MAX_SECONDS)  # no reader to pace it
        try:
            while reply.outcome is None:
                if should_stop is None:
                    self.run(reply, alone)
                else:
                    self.step([reply])
            return reply.outcome
        finally:
            reply.release()

    def close(self) -> None:
        ll = self._ll
        shelf = getattr(self, "shelf", None)
        if shelf is not None:
            # the conversations still in the sequences go on the shelf, left for the next
            # load of this model with these settings
            for seq, cache in enumerate(self._caches):
                if len(cache) >= kv_shelf.MIN_TOKENS:
                    self._shelve(seq)
            shelf.leave()
            self.shelf = None
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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    return shared_start(*(x if isinstance(x, list) else list(x) for x in (a, b)))


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop string begins in ``text[start:]``, or None."""
    found = [i for i in (text.find(stop, start) for stop in stops) if i >= 0]
    return min(found) if found else None



class Reply:
    """One reply being generated on one sequence of a ``Generator`` (made by ``begin``,
    advanced by ``step``); ``outcome`` is set when it has ended."""

    def __init__(self, gen: Generator, seq: int, tokens: Sequence[int], reused: int,
                 sampling: Sampling, sampler: Any, started: float,
                 on_text: Callable[[str, int], bool], should_stop: Callable[[], bool]) -> None:
        self._gen, self.seq, self.sampling, self._sampler = gen, seq, sampling, sampler
        self._on_text, self.should_stop = on_text, should_stop
        self.n_prompt, self.reused, self.started = len(tokens), reused, started
        self.pending: list[int] = list(tokens[reused:])  # to decode: the prompt, then a token
        self.pos = reused  # the position of pending[0]
        self.prompting = True
        self.prompt_seconds = 0.0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = tuple(x for x in sampling.stop if x)
        self._longest_stop = max((len(x) for x in self._stops), default=0)
        # the text handed over, in pieces (joined once at the end: a string grown by += on an
        # attribute is copied whole at every token, quadratic in the reply's length), and the
        # text not handed over yet: a split character's bytes live in the decoder, the start of
        # a possible stop string here
        self._parts: list[str] = []
        self._unsent, self.generated = "", 0
        self._waiting = 0  # tokens sampled whose text is not handed over yet (all of it)
        self._first_text = self._first_token = 0.0
        self._budget = min(sampling.max_tokens, gen.n_ctx - len(tokens))
        self.outcome: Outcome | None = None

    @property
    def budget_left(self) -> int:
        """How many more tokens the reply may sample."""
        return self._budget - self.generated

    def _emit(self, upto: int) -> bool:
        """Hand over the first ``upto`` characters not handed over yet, as the text of the
        tokens waiting; False when the reader refused them (those tokens are then not counted
        as generated)."""
        if upto > 0:
            piece = self._unsent[:upto]
            if not self._on_text(piece, self._waiting):
                self.generated -= self._waiting
                return False
            if not self._first_text:
                self._first_text = time.perf_counter()
            self._parts.append(piece)
            self._unsent = self._unsent[upto:]
            self._waiting = 0
        return True

    def advance(self, index: int) -> None:
        """Sample the next token from the logits at batch ``index`` and hand over its text, or
        end the reply."""
        gen, ll = self._gen, self._gen._ll
        if self.prompting:
            self.prompting = False
            self.prompt_seconds = time.perf_counter() - self.started
        if self.generated >= self._budget:
            self.finish("length")
            return
        if self.should_stop():
            self.finish("stopped")
            return
        token = ll.llama_sampler_sample(self._sampler, gen.ctx, index)  # accepts it too
        self.take([token])

    def take(self, tokens: Sequence[int]) -> None:
        """Tokens sampled, in order (one from ``advance``, a run of them from the C loop):
        end the reply at the first that ends it, else hand over their text in one piece and
        make the last the next to decode."""
        if not tokens:
            return
        for token in tokens:
            if not self._take(token):
                return
        upto = len(self._unsent)
        if self._stops:
            upto -= held_back(self._unsent, self._stops)
        if not self._emit(upto):  # stopped while this piece waited for its reader: drop it
            self.finish("stopped", held=False)
            return
        if self.generated >= self._budget:
            self.finish("length")
            return
        self.pending = [tokens[-1]]  # its keys and values, and the next logits, next

    def _take(self, token: int) -> bool:
        """Count a sampled token and add its text; end the reply at an end-of-generation
        token or a stop string (False then)."""
        gen = self._gen
        self.generated += 1
        self._waiting += 1
        if not self._first_token:
            self._first_token = time.perf_counter()
        if gen._ll.llama_vocab_is_eog(gen.vocab, token) and not self.sampling.ignore_eos:
            self._waiting -= 1  # it has no text
            self.finish("stop")
            return False
        before = len(self._unsent)
        self._unsent += self._decoder.decode(gen._piece(token))
        if self._stops:
            # a stop string can only end in the new text, and can only begin in the text not
            # handed over (its possible beginnings were held back): look from where it could
            # start
            found = _find_stop(self._unsent, self._stops, max(0, before - self._longest_stop + 1))
            if found is not None:
                self._unsent = self._unsent[:found]
                self.finish("stop" if self._emit(found) else "stopped", held=False)
                return False
        return True

    def finish(self, reason: str, *, held: bool = True) -> None:
        """End the reply: ``held`` hands over what was held back (the start of a stop string
        that never came). A character whose bytes were not all generated (the reply cut at its
        length or by Stop between a character's tokens) is left out, as llama-server's stream
        leaves it: a replacement character at the end says nothing to the reader."""
        if held and not self._emit(len(self._unsent)):
            reason = "stopped"
        ended = time.perf_counter()
        if self.prompting:
            self.prompt_seconds = ended - self.started
        self.outcome = Outcome(
            text="".join(self._parts), finish_reason=reason, prompt_tokens=self.n_prompt,
            cached_tokens=self.reused, generated_tokens=self.generated,
            ttft_seconds=(self._first_text or ended) - self.started,
            prompt_seconds=self.prompt_seconds,
            generation_seconds=ended - self._first_token if self._first_token else 0.0)
        self.pending = []
        self.release()

    def release(self) -> None:
        """Free the sampler (done at the end; call it for a reply abandoned before)."""
        if self._sampler is not None:
            self._gen._ll.llama_sampler_free(self._sampler)
            self._sampler = None
