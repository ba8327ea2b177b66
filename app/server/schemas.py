"""OpenAI's request bodies, validated, and turned into the engine's sampling settings.

Fields the engine cannot honour are refused with a 400 that names them (``n`` > 1, logprobs,
tools, images) rather than silently ignored; unknown extra fields are ignored, as OpenAI-style
servers do. Unset sampling fields take the app's defaults (``app.core.sampling``) except the
repeat penalty, which OpenAI's API does not have (1.0: off).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.sampling import Sampling
from app.engine.protocol import ChatMessage
from app.server.errors import ApiError

MAX_STOPS = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: str
    text: str | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampled(_Body):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    logprobs: bool | int | None = None
    user: str | None = None
    ignore_eos: bool = False  # llama.cpp server's extension: run to max_tokens (benchmarks)

    def check_supported(self) -> None:
        if self.n != 1:
            raise ApiError(400, "Only n=1 is supported: send one request per reply.", param="n")
        if self.logprobs:
            raise ApiError(400, "logprobs are not supported by this server.", param="logprobs")

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"At most {MAX_STOPS} stop strings.", param="stop")
        return tuple(s for s in stops if s)

    def sampling(self, max_tokens_limit: int, grammar: str | None = None,
                 max_tokens: int | None = None) -> Sampling:
        """The engine's settings for this request; raises ApiError over the limits."""
        self.check_supported()
        wanted = max_tokens if max_tokens is not None else self.max_tokens
        if wanted is not None and wanted > max_tokens_limit:
            raise ApiError(400, f"max_tokens is {wanted:,}; this server allows at most "
                                f"{max_tokens_limit:,}.", param="max_tokens")
        base = Sampling(repeat_penalty=1.0)
        values: dict[str, Any] = {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "min_p": self.min_p, "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty, "seed": self.seed,
            "ignore_eos": self.ignore_eos or None}
        chosen = {k: v for k, v in values.items() if v is not None}
        return replace(base, **chosen, max_tokens=wanted or max_tokens_limit,
                       stop=self.stops(), grammar=grammar)


class ChatCompletionRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None

    def engine_messages(self) -> tuple[ChatMessage, ...]:
        """The conversation as the engine takes it: text only; 'developer' is 'system'."""
        if self.tools:
            raise ApiError(400, "Tools (function calling) are not supported by this server.",
                           param="tools")
        out = []
        for i, message in enumerate(self.messages):
            if message.role == "tool":
                raise ApiError(400, "Tool messages are not supported by this server.",
                               param=f"messages.{i}.role")
            content = message.content
            if isinstance(content, list):
                if any(part.type != "text" for part in content):
                    raise ApiError(400, "This model reads text only: send text content parts.",
                                   param=f"messages.{i}.content")
                content = "".join(part.text or "" for part in content)
            role = "system" if message.role == "developer" else message.role
            out.append(ChatMessage(role, content or ""))
        return tuple(out)

    def grammar(self) -> str | None:
        """A GBNF grammar for ``response_format`` (llama.cpp's JSON grammar, or one made
        from the JSON schema by llama-cpp-python's converter); None for text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        from llama_cpp import llama_grammar

        if fmt.type == "json_object":
            return str(llama_grammar.JSON_GBNF)
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format json_schema needs a 'schema' object.",
                           param="response_format.json_schema.schema")
        try:
            return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises plain errors on schemas it lacks
            raise ApiError(400, f"This JSON schema cannot be turned into a grammar: {exc}",
                           param="response_format.json_schema.schema") from exc

    def engine_sampling(self, max_tokens_limit: int) -> Sampling:
        return self.sampling(max_tokens_limit, self.grammar(),
                             self.max_completion_tokens or self.max_tokens)


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    def engine_prompt(self) -> str:
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "Send one prompt per request.", param="prompt")
            prompt = prompt[0]
        if self.suffix:
            raise ApiError(400, "suffix (fill in the middle) is not supported.", param="suffix")
        if not prompt:
            raise ApiError(400, "The prompt is empty.", param="prompt")
        return prompt


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    def texts(self) -> tuple[str, ...]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts or len(texts) > 256:
            raise ApiError(400, "Send between 1 and 256 inputs.", param="input")
        if any(not t for t in texts):
            raise ApiError(400, "An input is empty.", param="input")
        return tuple(texts)
