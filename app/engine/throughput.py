"""How fast this machine runs one model, measured in a couple of seconds, for predictions.

The wizard predicts how long an importance matrix and each evaluation length will take from
this measurement rather than from constants: load time, prompt processing of a 512-token batch
(after a warm-up, as llama-bench does) and 32 single-token decodes, each the best of two, plus
how many tokens
the texts it will read have in this model's vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.engine.child import ChildCrashed, ChildFailed, call_in_child

SAMPLES = 2


class ThroughputError(Exception):
    """The model could not be measured; the message says why."""


@dataclass(frozen=True)
class Throughput:
    load_seconds: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    text_tokens: dict[str, int] = field(default_factory=dict)


def _measure(model: str, texts: dict[str, str], threads: int | None) -> Throughput:
    from app.engine.runner import Runner

    start = time.perf_counter()
    with Runner(model, 512, threads=threads) as runner:
        load = time.perf_counter() - start
        counts = {name: len(runner.tokenize(text)) for name, text in texts.items()}
        tokens = np.random.default_rng(0).integers(0, runner.n_vocab, 512).astype(np.int32)
        runner.decode(tokens[:16], all_logits=False)  # warm-up
        pp = tg = 0.0
        for _ in range(SAMPLES):  # the best of a few: a busy moment must not halve the rates
            t = time.perf_counter()
            runner.decode(tokens, all_logits=False)
            pp = max(pp, 512 / (time.perf_counter() - t))
            t = time.perf_counter()
            runner.generate_steps(int(tokens[0]), 32)
            tg = max(tg, 32 / (time.perf_counter() - t))
    return Throughput(load, pp, tg, counts)


def measure(model: Path, texts: Mapping[str, str] | None = None,
            threads: int | None = None) -> Throughput:
    """Load ``model`` in a child and measure it; ``texts`` are tokenized to count tokens."""
    try:
        return call_in_child(_measure, str(model), dict(texts or {}), threads, timeout=600)
    except ChildFailed as exc:
        raise ThroughputError(str(exc).removeprefix("RunnerError: ")) from None
    except ChildCrashed as exc:
        raise ThroughputError(f"llama.cpp stopped unexpectedly: {exc}.") from None
