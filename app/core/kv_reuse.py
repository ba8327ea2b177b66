"""Whether a prompt should go on from the tokens a sequence's KV cache holds, or be decoded whole.

Keeping a cached prefix saves decoding it again, but moves where the prompt's micro-batches end.
llama.cpp makes each micro-batch attend to every cell up to its last position, rounded up to a
multiple of ``KV_PAD`` (256). A prompt decoded from position 0 in micro-batches of 512 ends them
at 512, 1,024, …, each attending to just that many cells. The same prompt after a kept prefix
of a few tokens ends them a few tokens later, and each then attends to 256 cells more.

On a long prompt that shares only its opening tokens with the cache (a new conversation
under the same template, a document pasted after another), the extra attention costs more
than the prefix saves. SmolLM2 Q4_K_M, 777 tokens on 2 threads: 1,778 ms after keeping 4 cached
tokens, 1,608 ms decoded whole (``llama_decode`` alone, same context, alternating).
``worth_keeping`` compares the two in arithmetic: the weights' 2 x parameters a token against
attention's 4 x n_embd x n_layer per (query, cell), the latter weighted by
``ATTENTION_WEIGHT``. Next turns of a conversation (thousands kept, a few dozen new) keep
their cache by far.
"""

from __future__ import annotations

import math

from app.core.memory import KV_PAD

# Attention's arithmetic is slower than the weights' matrix products: in the measurement above
# the 127k extra (query, cell) pairs, 8.8 GFLOP, took 136 ms, where the decode as a whole ran
# at 150 GFLOP/s; 2.3 times the time per operation. Measured on the CPU (no flash attention,
# as the engine loads a small model there); a GPU's weight is not measured.
ATTENTION_WEIGHT = 2.3


def attended_cells(start: int, end: int, n_ubatch: int, pad: int = KV_PAD) -> int:
    """The (query, cell) pairs llama.cpp computes attention over when it decodes positions
    ``start``…``end - 1`` in micro-batches of ``n_ubatch``: each micro-batch's tokens attend to
    the cells up to its last position, rounded up to a multiple of ``pad``."""
    total = 0
    for first in range(start, end, n_ubatch):
        last = min(first + n_ubatch, end)
        total += (last - first) * (math.ceil(last / pad) * pad)
    return total


def worth_keeping(keep: int, n_tokens: int, *, n_params: int, n_embd: int, n_layer: int,
                  n_ubatch: int) -> bool:
    """Whether decoding a prompt of ``n_tokens`` after ``keep`` cached tokens costs no more
    than decoding it whole, by the arithmetic each needs (module docstring)."""
    if keep <= 0:
        return False
    extra_pairs = attended_cells(keep, n_tokens, n_ubatch) - attended_cells(0, n_tokens, n_ubatch)
    extra = extra_pairs * 4 * n_embd * n_layer * ATTENTION_WEIGHT
    return keep * 2 * n_params >= extra
