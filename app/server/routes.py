"""The OpenAI-compatible endpoints on the shared engine.

Each request becomes one piece of work in the engine's fair queue (its source: the client's
address). A streamed reply's headers go out with its first token, so whatever fails before
that — an unknown model, a prompt over the context, a dead engine — is an ordinary HTTP error
in OpenAI's shape; a failure after that is an ``error`` event in the stream, as OpenAI sends.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.middleware.cors import CORSMiddleware

from app.engine.host import Crashed, HostEvent
from app.engine.protocol import ChatMessage, Embeddings, Failed, ReplyDone, Sampling, Token
from app.engine.shared_host import SharedHost
from app.server import errors
from app.server.bridge import Gone, WorkEvents
from app.server.config import ServerConfig
from app.server.errors import ApiError
from app.server.request_log import LogEntry, RequestLog
from app.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from app.server.security import Guard

Chunk = Callable[[str | None, str | None], dict[str, Any]]


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # 'stopped': the client had left


def _usage(done: ReplyDone) -> dict[str, object]:
    """OpenAI's usage, with the prompt tokens that came from the KV cache (not decoded again)
    where OpenAI reports its prompt caching."""
    m = done.metrics
    return {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.generated_tokens,
            "total_tokens": m.prompt_tokens + m.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": m.cached_tokens}}


class Api:
    """The routes' shared state: the engine, the configuration, the log."""

    def __init__(self, shared: SharedHost, config: ServerConfig, log: RequestLog) -> None:
        self.shared = shared
        self.config = config
        self.log = log

    # --- the model --------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """The names the served model answers to (first: the one listed)."""
        settings = self.shared.settings
        loaded = self.shared.current
        path = loaded.path if loaded is not None else settings.path if settings else None
        if path is None:
            return []
        stem = Path(path).stem
        first = self.config.model_id or stem
        return list(dict.fromkeys([first, stem, Path(path).name, *self.config.extra_model_ids]))

    def check_model(self, model: str) -> str:
        ids = self.model_ids()
        if not ids:
            raise ApiError(503, "No model is loaded: load one in QuantDesk first.",
                           code="model_not_loaded")
        if model not in ids:
            raise ApiError(404, f"The model '{model}' does not exist here; this server serves "
                                f"'{ids[0]}'.", param="model", code="model_not_found")
        return ids[0]

    # --- one request's life -----------------------------------------------------------------

    def submit(self, request: Request, endpoint: str, stream: bool, *,
               messages: Sequence[ChatMessage] = (), sampling: Sampling | None = None,
               prompt: str | None = None, texts: Sequence[str] | None = None
               ) -> tuple[LogEntry, WorkEvents]:
        """Log the request and queue its work on the shared engine (``SharedHost.submit``),
        in the turn of its client's address."""
        client = request.client
        entry = LogEntry(client=f"{client.host}:{client.port}" if client else "?",
                         endpoint=endpoint, stream=stream)
        self.log.add(entry)
        events = WorkEvents(self.shared, f"api {client.host if client else '?'}",
                            messages=messages, sampling=sampling, prompt=prompt, texts=texts)
        entry.work = events.work
        return entry, events

    def close(self, entry: LogEntry, events: WorkEvents | None, status: int,
              done: ReplyDone | None = None, error: str | None = None) -> None:
        now = time.monotonic()
        entry.status = status
        entry.error = error
        entry.duration = now - entry.arrived
        if events is not None:
            work = events.work
            if work.started_at is not None:
                entry.queued_seconds = work.started_at - work.queued_at
            entry.completion_tokens = work.tokens
        if done is not None:
            entry.prompt_tokens = done.metrics.prompt_tokens
            entry.completion_tokens = done.metrics.generated_tokens
            entry.finish_reason = done.finish_reason
        if entry.ttft is not None and entry.completion_tokens > 1:
            generating = entry.duration - entry.ttft
            if generating > 0:
                entry.tokens_per_second = (entry.completion_tokens - 1) / generating
        self.log.touch()

    async def first_event(self, request: Request, entry: LogEntry,
                          events: WorkEvents) -> HostEvent:
        """The work's first event; an engine failure becomes an ApiError."""
        try:
            event = await events.next(request)
        except Gone:
            self.close(entry, events, 499, error="the client left before the reply started")
            raise
        if isinstance(event, Token):
            entry.ttft = time.monotonic() - entry.arrived
        if isinstance(event, (Failed, Crashed)):
            error = errors.from_engine(event)
            self.close(entry, events, error.status, error=error.message)
            raise error
        return event

    async def collect(self, request: Request, entry: LogEntry, events: WorkEvents
                      ) -> tuple[str, ReplyDone]:
        """Run a reply to its end (not streamed)."""
        event = await self.first_event(request, entry, events)
        while not isinstance(event, ReplyDone):
            try:
                event = await events.next(request)
            except Gone:
                self.close(entry, events, 499, error="the client left")
                raise
            if isinstance(event, (Failed, Crashed)):
                error = errors.from_engine(event)
                self.close(entry, events, error.status, error=error.message)
                raise error
        self.close(entry, events, 200, done=event)
        return event.text, event

    def stream(self, request: Request, entry: LogEntry, events: WorkEvents,
               first: HostEvent, chunk: Chunk, usage_chunk: dict[str, Any] | None,
               prefix: str = "") -> EventSourceResponse:
        """Stream a reply as server-sent events; ``chunk(text, finish_reason)`` makes each."""

        async def body() -> AsyncIterator[dict[str, str]]:
            done: ReplyDone | None = None
            status = 499
            try:
                if prefix:
                    yield {"data": _json(chunk(prefix, None))}
                event = first
                while True:
                    if isinstance(event, Token):
                        yield {"data": _json(chunk(event.text, None))}
                    elif isinstance(event, ReplyDone):
                        done = event
                        yield {"data": _json(chunk(None, _finish_reason(event.finish_reason)))}
                        if usage_chunk is not None:
                            yield {"data": _json({**usage_chunk, "usage": _usage(event)})}
                        yield {"data": "[DONE]"}
                        status = 200
                        return
                    elif isinstance(event, (Failed, Crashed)):
                        error = errors.from_engine(event)
                        status = error.status
                        entry.error = error.message
                        yield {"data": _json(error.body())}
                        return
                    event = await events.next()
            finally:
                if not events.finished:
                    events.cancel()  # the client left (or the stream broke): free the engine
                self.close(entry, events, status, done=done, error=entry.error
                           if status != 499 else "the client left during the reply")

        return EventSourceResponse(body(), ping=15, headers={"Cache-Control": "no-cache"})


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def create_app(shared: SharedHost, config: ServerConfig, log: RequestLog | None = None
               ) -> FastAPI:
    """The FastAPI application for ``shared``'s model."""
    api = Api(shared, config, log or RequestLog())
    app = FastAPI(title="QuantDesk local server", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.api = api
    errors.install_handlers(app)

    @app.exception_handler(Gone)
    async def _gone(_request: Request, _exc: Gone) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has left

    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    if config.cors_origins:  # added last: outermost, so preflights are answered first
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.get("/health")
    async def health() -> dict[str, str]:
        if shared.current is not None:
            return {"status": "ok"}
        return {"status": "loading" if shared.loading else "no model"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = api.model_ids()
        return {"object": "list", "data": [_model(ids[0], shared)] if ids else []}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return _model(api.check_model(model_id), shared)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request
                               ) -> JSONResponse | EventSourceResponse:
        model_id = api.check_model(body.model)
        messages = body.engine_messages()
        sampling = body.engine_sampling(config.max_tokens_limit)
        entry, events = api.submit(request, "chat/completions", body.stream,
                                   messages=messages, sampling=sampling)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not body.stream:
            text, done = await api.collect(request, entry, events)
            return JSONResponse({
                "id": reply_id, "object": "chat.completion", "created": created,
                "model": model_id, "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None,
                             "finish_reason": _finish_reason(done.finish_reason)}],
                "usage": _usage(done)})
        first = await api.first_event(request, entry, events)
        base = {"id": reply_id, "object": "chat.completion.chunk", "created": created,
                "model": model_id, "system_fingerprint": None}
        started = [False]

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            delta: dict[str, str] = {}
            if not started[0]:
                delta["role"] = "assistant"
                started[0] = True
            if text is not None:
                delta["content"] = text
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}]}

        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return api.stream(request, entry, events, first, chunk,
                          {**base, "choices": []} if include_usage else None)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request
                          ) -> JSONResponse | EventSourceResponse:
        model_id = api.check_model(body.model)
        prompt = body.engine_prompt()
        sampling = body.sampling(config.max_tokens_limit)
        entry, events = api.submit(request, "completions", body.stream, prompt=prompt,
                                   sampling=sampling)
        reply_id, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        echo = prompt if body.echo else ""
        if not body.stream:
            text, done = await api.collect(request, entry, events)
            return JSONResponse({
                "id": reply_id, "object": "text_completion", "created": created,
                "model": model_id, "system_fingerprint": None,
                "choices": [{"index": 0, "text": echo + text, "logprobs": None,
                             "finish_reason": _finish_reason(done.finish_reason)}],
                "usage": _usage(done)})
        first = await api.first_event(request, entry, events)
        base = {"id": reply_id, "object": "text_completion", "created": created,
                "model": model_id, "system_fingerprint": None}

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "text": text or "", "logprobs": None,
                                         "finish_reason": finish}]}

        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return api.stream(request, entry, events, first, chunk,
                          {**base, "choices": []} if include_usage else None, prefix=echo)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        model_id = api.check_model(body.model)
        texts = body.texts()
        entry, events = api.submit(request, "embeddings", False, texts=texts)
        event = await api.first_event(request, entry, events)
        if not isinstance(event, Embeddings):
            api.close(entry, events, 500, error="unexpected engine answer")
            raise ApiError(500, "The engine answered an embeddings request with no vectors.")
        entry.prompt_tokens = event.prompt_tokens
        api.close(entry, events, 200)
        data = [{"object": "embedding", "index": i,
                 "embedding": _encode(vector, body.encoding_format)}
                for i, vector in enumerate(event.vectors)]
        return {"object": "list", "data": data, "model": model_id,
                "usage": {"prompt_tokens": event.prompt_tokens,
                          "total_tokens": event.prompt_tokens}}

    return app


def _encode(vector: tuple[float, ...], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)


def _model(model_id: str, shared: SharedHost) -> dict[str, Any]:
    settings = shared.settings
    created = 0
    if settings is not None:
        try:
            created = int(Path(settings.path).stat().st_mtime)
        except OSError:
            created = 0
    return {"id": model_id, "object": "model", "created": created, "owned_by": "quantdesk"}
