"""Embedding vectors from the loaded model, in a second llama.cpp context on the same weights.

The generation context (``app.engine.generation``) is made without embeddings output; turning
them on there would cost every reply. So the first embeddings request makes a second context on
the *same* ``llama_model`` (no second copy of the weights), with embeddings on and the model's
own pooling. Only models that declare a pooling type in their GGUF (``{arch}.pooling_type``:
mean, CLS or last token, as embedding models such as BGE or nomic-embed do) are embedding
models; a chat model has none, and asking it for embeddings is refused with a clear message
rather than answered with a vector that means nothing.

Runs inside the model host's child process (``app.engine.host_child``).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

from app.core.memory import embeddings_context
from app.engine.generation import GenerationError
from app.engine.protocol import LoadSettings

POOLING_NAMES = {1: "mean", 2: "CLS", 3: "last token"}  # llama.cpp's llama_pooling_type


class EmbeddingsUnsupported(GenerationError):
    """The model is not an embedding model."""


def _meta(ll: Any, model: Any, key: str) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = ll.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else None


def declared_pooling(ll: Any, model: Any) -> int:
    """The pooling type the model's GGUF declares (0 when none: a text-generation model)."""
    arch = _meta(ll, model, "general.architecture") or ""
    value = _meta(ll, model, f"{arch}.pooling_type")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


class EmbeddingContext:
    """A context with embeddings on, sharing ``model``'s weights. Closed by ``close``."""

    def __init__(self, model: Any, settings: LoadSettings) -> None:
        import llama_cpp

        self._ll = ll = llama_cpp
        self.pooling = declared_pooling(ll, model)
        if self.pooling not in POOLING_NAMES:
            name = _meta(ll, model, "general.name") or "This model"
            raise EmbeddingsUnsupported(
                f"{name} is a text-generation model: its GGUF declares no pooling, so it has "
                "no embeddings to give. Serve an embedding model (one whose GGUF sets a pooling "
                "type, such as BGE or nomic-embed-text) for /v1/embeddings.")
        from app.engine.runner import default_threads

        n_ctx = embeddings_context(settings.n_ctx, int(ll.llama_model_n_ctx_train(model)))
        params = ll.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx  # a whole text per batch
        params.n_threads = params.n_threads_batch = settings.n_threads or default_threads()
        params.embeddings = True
        params.pooling_type = self.pooling
        params.no_perf = True
        self.ctx = ll.llama_init_from_model(model, params)
        if not self.ctx:
            raise GenerationError("llama.cpp could not create the embeddings context (not "
                                  "enough memory?)")
        self.model = model
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_ctx = n_ctx
        self.n_embd = int(ll.llama_model_n_embd(model))
        self._encoder_only = bool(ll.llama_model_has_encoder(model)) and not bool(
            ll.llama_model_has_decoder(model))
        self._batch = ll.llama_batch_init(n_ctx, 0, 1)

    def _tokens(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        n = len(raw) + 16
        buf = (self._ll.llama_token * n)()
        got = self._ll.llama_tokenize(self.vocab, raw, len(raw), buf, n, True, False)
        if got < 0:
            raise GenerationError("tokenization failed")
        return list(buf[:got])

    def embed(self, texts: tuple[str, ...]) -> tuple[tuple[tuple[float, ...], ...], int]:
        """One L2-normalized vector per text, and the tokens they took in all."""
        ll, ctx, batch = self._ll, self.ctx, self._batch
        vectors: list[tuple[float, ...]] = []
        total = 0
        for index, text in enumerate(texts):
            tokens = self._tokens(text)
            if not tokens:
                raise GenerationError(f"Input {index} is empty.")
            if len(tokens) > self.n_ctx:
                raise GenerationError(f"Input {index} is {len(tokens):,} tokens, more than the "
                                      f"embeddings context of {self.n_ctx:,}.")
            total += len(tokens)
            memory = ll.llama_get_memory(ctx)
            if memory:
                ll.llama_memory_clear(memory, True)
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = len(tokens)
            run = ll.llama_encode if self._encoder_only else ll.llama_decode
            if run(ctx, batch) != 0:
                raise GenerationError("llama.cpp could not compute the embeddings.")
            pointer = ll.llama_get_embeddings_seq(ctx, 0)
            if not pointer:
                raise GenerationError("llama.cpp gave no pooled embeddings for this model.")
            values = [float(pointer[i]) for i in range(self.n_embd)]
            norm = math.sqrt(sum(v * v for v in values)) or 1.0
            vectors.append(tuple(v / norm for v in values))
        return tuple(vectors), total

    def close(self) -> None:
        ll = self._ll
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            ll.llama_free(self.ctx)
            self.ctx = None
