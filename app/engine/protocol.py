"""The model host's message protocol: requests in, events out. Plain picklable dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.sampling import Sampling

__all__ = ["Sampling"]  # part of the protocol; defined in core so settings share its defaults

MAX_PARALLEL = 16  # the most replies one engine generates at once (LoadSettings.n_parallel)
# Text for a person to read (the window, ``quantdesk chat``) needs no more than 25 events a
# second (Chat.event_interval); each event wakes the reader on a core llama.cpp's threads may be
# using. Programs (the server's clients) get an event per token.
READING_INTERVAL = 0.04

# --- requests (parent -> child) ---------------------------------------------------------------


@dataclass(frozen=True)
class LoadSettings:
    """How to load a model. ``n_gpu_layers``: 0 = CPU only, -1 = all layers on the GPU."""

    path: str
    n_ctx: int = 4096
    n_gpu_layers: int = 0
    n_threads: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: str = "auto"  # "auto" (llama.cpp's tools' default), "on" or "off"
    type_k: str | None = None  # KV cache type: "f16" (default), "q8_0", "q4_0"
    type_v: str | None = None
    # llama.cpp RPC servers ("host:port") whose devices take part in this load (app.engine.rpc)
    rpc_servers: tuple[str, ...] = ()
    # replies generated at once (llama.cpp parallel sequences), each with n_ctx of context
    n_parallel: int = 1


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Load:
    settings: LoadSettings


@dataclass(frozen=True)
class Chat:
    """A reply to ``messages`` (through the model's chat template) or, when ``prompt`` is set,
    a continuation of that raw text (completions: no template)."""

    request_id: int
    messages: tuple[ChatMessage, ...]
    sampling: Sampling = field(default_factory=Sampling)
    prompt: str | None = None
    lane: int = 0  # its place in the shared stop and read counts (one per running reply)
    # the least time between two text events (seconds): 0 sends each piece once the reader has
    # read the last; a reader that shows text a few times a second asks for fewer events
    event_interval: float = 0.0
    # read ahead: decode the prompt into the cache and end there ('length', no text), so that
    # the reply to these messages, asked for next, starts from the cache. The chat reads the
    # message being typed this way. A read-ahead gives way to any other reply: one that comes
    # while it runs ends it first (at the end of the batch being decoded: that batch is the
    # same prompt's, so kept and not decoded again).
    read_ahead: bool = False


@dataclass(frozen=True)
class Embed:
    """Embedding vectors of ``texts`` (one each, pooled as the model says; normalized)."""

    request_id: int
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Unload:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Forget:
    """Drop the conversations the engine keeps for a quick next turn: the idle sequences'
    caches and every shelved state, on disk too (a conversation was deleted)."""


Request = Load | Chat | Embed | Unload | Shutdown | Forget

# --- events (child -> parent) -----------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    """A line llama.cpp (or the child) logged; the parent re-logs it and keeps the last ones."""

    level: int
    text: str


@dataclass(frozen=True)
class LoadProgress:
    fraction: float


@dataclass(frozen=True)
class Loaded:
    path: str
    n_ctx: int
    n_ctx_train: int
    n_gpu_layers: int
    load_seconds: float
    rss_bytes: int
    gpu_bytes: int | None
    rss_before_bytes: int  # the child's RSS just before loading: the bare engine process
    template_source: str  # "model" or "fallback"
    n_parallel: int = 1  # replies the engine generates at once


@dataclass(frozen=True)
class ReplyMetrics:
    """What one reply cost. Speeds come from llama.cpp's own timers (prompt: batched decode of
    the prompt tokens not already cached; generation: one-token decodes). ``generated_tokens``
    counts the tokens sampled for the reply, its end-of-turn token included."""

    prompt_tokens: int
    generated_tokens: int
    ttft_seconds: float
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    total_seconds: float
    peak_rss_bytes: int
    gpu_bytes: int | None = None
    cached_tokens: int = 0  # of the prompt, reused from the previous reply (not decoded again)


@dataclass(frozen=True)
class Token:
    """Streamed text: ``pieces`` generation steps' worth (one token each, as a rule; more when
    the reader was busy and the child held text to send it together)."""

    request_id: int
    text: str
    pieces: int = 1


@dataclass(frozen=True)
class ReplyDone:
    """The end of a reply. ``finish_reason``: 'stop' (end of turn), 'length' or 'stopped'."""

    request_id: int
    text: str
    finish_reason: str
    metrics: ReplyMetrics


@dataclass(frozen=True)
class Failed:
    """A request failed; the child is still alive. After a failed load, or when ``unusable``
    (it ran out of memory), the parent's next load starts a fresh child instead."""

    request_id: int | None
    message: str
    log_tail: tuple[str, ...] = ()
    unusable: bool = False
    # what kind of failure, for callers that answer in codes (the server): "context_length",
    # "template", "grammar", "embeddings_unsupported", "invalid_request"; "" when other
    code: str = ""


@dataclass(frozen=True)
class Embeddings:
    """The answer to ``Embed``: one vector per text, and how many tokens they took."""

    request_id: int
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


@dataclass(frozen=True)
class Unloaded:
    pass


Event = LogLine | LoadProgress | Loaded | Token | ReplyDone | Failed | Embeddings | Unloaded
