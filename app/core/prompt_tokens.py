"""Tokenize a conversation's prompt again each turn, reusing the last turn's tokens up to a
special token both prompts share.

Each turn's prompt is the whole conversation rendered through the chat template, and
tokenizing all of it costs about 1.3 us a token here (40 ms a turn at 32k tokens: on a GPU, a
large part of the time to the first token). llama.cpp splits a prompt at its special tokens
first (``tokenizer_st_partition``) and tokenizes each stretch of text between them on its own:
the BPE session and the SentencePiece one keep nothing from one stretch to the next but whether
the last piece was a special token. So where two prompts share their text up to a special token
S, the tokens before S are the same in both, and only the text from S on needs tokenizing.

That holds where llama.cpp sees S at that place in both prompts, which is checked, not assumed:

- S is matched there: the tail tokenized alone starts with S's id, and S's text occurs as often
  in the prompt as its id in the tokens (each occurrence was read as S);
- no other special token's text straddles the place (it would be matched first, or instead);
- S does not strip the whitespace on its left (``lstrip``: that whitespace belongs to the text
  before S, which would then be tokenized without it), unless there is none;
- the vocabulary adds no end-of-sequence token after a prompt (the tail would lack it), and is a
  BPE or SentencePiece one (the others are not known to tokenize stretches apart).

Anything else, and the prompt is tokenized whole, as before. S is the control token the first
prompt with any uses most after its first token (ChatML's ``<|im_start|>``, Llama 3's
``<|start_header_id|>``): it opens every message, so the shared text of two turns ends at one.
Prompts without control tokens (raw completions) are tokenized whole.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# how many prompts are kept to continue from: a few conversations served in turn
KEEP = 8
# prompts in which a marker is looked for before giving up: prompts written without control
# tokens (raw completions, a template of plain text) have none, and looking costs a pass over
# their tokens
MARKER_LOOKS = 4


@dataclass(frozen=True)
class Special:
    """One of the vocabulary's special tokens, as llama.cpp's partition matches it."""

    id: int
    text: str
    control: bool
    lstrip: bool


@dataclass
class _Prompt:
    text: str
    tokens: list[int]
    # (where S begins in the text, S's index in the tokens), in order
    marks: list[tuple[int, int]] = field(default_factory=list)


class PromptTokens:
    """``tokenize(text, add_special=True)`` for chat prompts, reusing earlier prompts' tokens.

    ``tokenize`` is llama.cpp's (text, add_special) -> tokens, special tokens parsed;
    ``specials`` every token it matches as special (control, user-defined, unknown).
    ``reusable`` is False for vocabularies the reuse does not hold for (see the module)."""

    def __init__(self, tokenize: Callable[[str, bool], list[int]],
                 specials: Sequence[Special], *, reusable: bool) -> None:
        self._tokenize = tokenize
        self._specials = [s for s in specials if s.text]
        self._by_id = {s.id: s for s in self._specials}
        self.reusable = reusable and bool(self._specials)
        self.marker: Special | None = None  # S, chosen from the first prompt
        self._straddlers: list[Special] = []
        self._looks = 0  # prompts the marker was looked for in
        self._prompts: list[_Prompt] = []  # the most recent last
        self.reused_tokens = 0  # of the last call: tokens taken from an earlier prompt

    def __call__(self, text: str) -> list[int]:
        self.reused_tokens = 0
        if not self.reusable:
            return self._tokenize(text, True)
        found = self._continued(text)
        if found is None:
            tokens = self._tokenize(text, True)
            if self.marker is None and self._looks < MARKER_LOOKS:
                self._looks += 1
                self._set_marker(self._choose_marker(tokens))
            self._keep(_Prompt(text, tokens, self._marks(text, tokens)))
            return tokens
        prompt, (at, index) = found
        tail = self._tokenize(text[at:], False)
        marker = self.marker
        assert marker is not None
        if not tail or tail[0] != marker.id or self._straddled(text, at):
            tokens = self._tokenize(text, True)  # not as it looked: the whole prompt
            self._keep(_Prompt(text, tokens, self._marks(text, tokens)))
            return tokens
        tokens = prompt.tokens[:index] + tail
        marks = [m for m in prompt.marks if m[0] <= at]
        marks += self._marks(text, tokens, at + len(marker.text), index + 1)
        self._keep(_Prompt(text, tokens, marks))
        self.reused_tokens = index
        return tokens

    def clear(self) -> None:
        """Forget the prompts kept (their conversations were deleted)."""
        self._prompts = []

    # --- the parts ------------------------------------------------------------------------

    def _continued(self, text: str) -> tuple[_Prompt, tuple[int, int]] | None:
        """The kept prompt and its last mark up to which ``text`` is the same (the marker's
        text included), reusing the most tokens; None if none is."""
        best: tuple[_Prompt, tuple[int, int]] | None = None
        size = len(self.marker.text) if self.marker is not None else 0
        for prompt in self._prompts:
            if not prompt.marks:
                continue
            shared = shared_start(text, prompt.text)
            i = bisect.bisect_right(prompt.marks, shared - size, key=lambda m: m[0])
            if i and (best is None or prompt.marks[i - 1][1] > best[1][1]):
                best = (prompt, prompt.marks[i - 1])
        return best

    def _set_marker(self, marker: Special | None) -> None:
        self.marker = marker
        # a special token reaching across a place where the marker begins has the marker's
        # first character after its own first
        head = marker.text[0] if marker is not None else ""
        self._straddlers = [s for s in self._specials if head and head in s.text[1:]]

    def _choose_marker(self, tokens: list[int]) -> Special | None:
        """The control token this prompt uses most (the first to appear of those), if the
        reuse can start at it."""
        counts: dict[int, int] = {}
        for token in tokens[1:]:  # not the first: a BOS there marks no place to reuse up to
            special = self._by_id.get(token)
            if special is not None and special.control:
                counts[token] = counts.get(token, 0) + 1
        if not counts:
            return None
        most = max(counts.values())
        first = next(t for t in tokens[1:] if counts.get(t) == most)
        return self._by_id[first]

    def _marks(self, text: str, tokens: Sequence[int], start: int = 0, first: int = 0
               ) -> list[tuple[int, int]]:
        """Where the marker begins in ``text`` (from ``start``) and its index in ``tokens``
        (from ``first``), at each place a later prompt's reuse may start; none if the text
        holds the marker's text where the tokens do not hold its id (read as part of another
        token)."""
        marker = self.marker
        if marker is None:
            return []
        places = []
        at = text.find(marker.text, start)
        while at >= 0:
            places.append(at)
            at = text.find(marker.text, at + len(marker.text))
        indices = [i for i in range(first, len(tokens)) if tokens[i] == marker.id]
        if len(places) != len(indices):
            return []
        return [(at, index) for at, index in zip(places, indices, strict=True)
                if at > 0 and not (marker.lstrip and text[at - 1].isspace())
                and not self._straddled(text, at)]

    def _straddled(self, text: str, at: int) -> bool:
        """Whether a special token's text in ``text`` begins before ``at`` and ends after it
        (llama.cpp would match it across the place, where the marker begins)."""
        for special in self._straddlers:
            n = len(special.text)
            found = text.find(special.text, max(0, at - n + 1), at + n - 1)
            if 0 <= found < at:
                return True
        return False

    def _keep(self, prompt: _Prompt) -> None:
        self._prompts = [p for p in self._prompts if p.text != prompt.text][-(KEEP - 1):]
        self._prompts.append(prompt)


def shared_start(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items two strings (or two lists) share: compared in halving slices, in
    C, so about twice the shorter's length is looked at (0.23 ms for 30k tokens where a Python
    loop takes 0.83; a long conversation's prompts share all but their last messages). Both
    must be of one type: a list's slice never equals a tuple's."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 32:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo
