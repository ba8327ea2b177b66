"""Splitting replies into prose and code blocks."""

from __future__ import annotations

from app.core.markdown_blocks import Block, settled_end, split_blocks


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


def test_settled_end_is_after_the_last_blank_line() -> None:
    text = "First paragraph.\n\nSecond one, still being wri"
    assert settled_end(text) == text.index("Second")
    assert settled_end("no break yet") == 0
    # nothing settles before where the caller has settled already
    assert settled_end(text, start=text.index("Second")) == text.index("Second")


def test_settled_end_never_cuts_inside_a_code_fence() -> None:
    text = "Intro.\n\n```python\nx = 1\n\ny = 2\n"
    assert settled_end(text) == text.index("```")  # the blank line in the code does not count
    closed = text + "```\n\nAfter the code"
    assert settled_end(closed) == closed.index("After")
