"""Splitting replies into prose and code blocks."""

from __future__ import annotations

from app.core.markdown_blocks import Block, split_blocks


def test_prose_and_fenced_code() -> None:
    text = "Intro\n\n```python\nx = 1\nprint(x)\n```\nOutro"
    assert split_blocks(text) == [Block("text", "Intro"),
                                  Block("code", "x = 1\nprint(x)", "python"),
                                  Block("text", "Outro")]


def test_unclosed_fence_while_streaming_is_code_to_the_end() -> None:
    assert split_blocks("See:\n```sh\nls -l\n") == [Block("text", "See:"),
                                                   Block("code", "ls -l", "sh")]


def test_plain_text_only() -> None:
    assert split_blocks("just words") == [Block("text", "just words")]
    assert split_blocks("") == []
