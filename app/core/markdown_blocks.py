"""Split a chat message into prose and fenced code blocks, so code gets its own copy button."""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[ \t]*\n(.*?)(?:^```[ \t]*$|\Z)", re.S | re.M)
_FENCE_LINE = re.compile(r"^```", re.M)


@dataclass(frozen=True)
class Block:
    """A piece of a message: prose (Markdown) or code (with its language, maybe empty)."""

    kind: str  # "text" or "code"
    text: str
    language: str = ""


def split_blocks(message: str) -> list[Block]:
    """Prose and fenced code blocks in order; an unclosed fence runs to the end (streaming)."""
    blocks: list[Block] = []
    pos = 0
    for match in _FENCE.finditer(message):
        before = message[pos:match.start()]
        if before.strip():
            blocks.append(Block("text", before.strip("\n")))
        blocks.append(Block("code", match.group(2).rstrip("\n"), match.group(1)))
        pos = match.end()
    rest = message[pos:]
    if rest.strip():
        blocks.append(Block("text", rest.strip("\n")))
    return blocks


def settled_end(text: str, start: int = 0) -> int:
    """Where the settled part of a growing message ends: just after its last blank line at or
    after ``start`` that is outside a code fence, or ``start`` when there is none. What comes
    before cannot change as more text arrives (a paragraph, a list item or a closed code block
    is finished), so a streaming view lays it out once."""
    cut = text.rfind("\n\n", start)
    while cut >= start:
        if len(_FENCE_LINE.findall(text, 0, cut)) % 2 == 0:
            return cut + 2
        cut = text.rfind("\n\n", start, cut)
    return start
