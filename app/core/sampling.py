"""Sampling settings for one reply: the engine's request field and the settings' defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Sampling settings for one reply."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate max_tokens whatever the model says (benchmarks)
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already seen
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence of a seen token
    grammar: str | None = None  # a GBNF grammar the reply must follow (JSON replies, say)
