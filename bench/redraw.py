"""What one redraw of a streaming reply costs the window as the reply grows.

A reply grows a sentence (or a code line) at a time in a message bubble inside a scroll area,
as on the Chat page, and each step is shown and laid out (``processEvents``). Measured: the
window thread's time for one step at a few lengths, for the message widget as it streams
(settled paragraphs and code lines in labels of their own, each label laying its text out once
per width) against one QLabel holding the whole reply, the way the window showed a streaming
reply before, in the same run. Target: a redraw stays well under the 40 ms between two redraws
however long the reply gets (a redraw that costs more is a stall, and on a small machine its
time is taken from llama.cpp's threads).

Also measured: the reply's end, when the message is laid out as a finished one
(``MessageWidget.finish``: one label per block of prose, so that a selection can run across its
paragraphs): one stall, growing with the reply. The UI's target for any stall is 50 ms
(``bench/ui_responsiveness.py``).

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.redraw
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QLabel, QScrollArea, QVBoxLayout, QWidget

from app.ui.chat.message_widget import MessageWidget

SENTENCE = "The river flows through the valley and carries silt to the sea. "
CODE_LINE = "    total = compute_something(value, other_value) + 42  # a comment\n"


def prose(paragraphs: int) -> list[str]:
    """The reply after each step: three sentences a paragraph."""
    steps, text = [], ""
    for _ in range(paragraphs):
        for _ in range(3):
            text += SENTENCE
            steps.append(text)
        text += "\n\n"
    return steps


def code(lines: int) -> list[str]:
    """The reply after each step: a line of an open code block at a time."""
    text = "Here is the program:\n\n```python\n"
    steps = []
    for _ in range(lines):
        text += CODE_LINE
        steps.append(text)
    return steps


def paragraph(chars: int) -> list[str]:
    """The reply after each step: one paragraph that never ends, 100 characters a step (what
    the tiny model's random text looks like; a real model's long paragraph is shorter)."""
    rng = random.Random(1)
    text, steps = "", list[str]()
    while len(text) < chars:
        while len(text) < 100 * (len(steps) + 1):
            text += "".join(rng.choices("abcdefghilmnoprstu", k=rng.randint(1, 8))) + " "
        steps.append(text)
    return steps


def one_label() -> tuple[QWidget, Callable[[str], None]]:
    """The whole reply in one Markdown label (the window before)."""
    bubble = QWidget()
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.MarkdownText)
    label.setWordWrap(True)
    QVBoxLayout(bubble).addWidget(label)
    return bubble, lambda text: label.setText(text + " ▍")


def message_widget() -> tuple[QWidget, Callable[[str], None]]:
    widget = MessageWidget("assistant")
    return widget, widget.show_streaming


def shown(app: QApplication, widget: QWidget) -> QScrollArea:
    """``widget`` shown in a scroll area as the conversation view shows a message."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(widget)
    area.resize(900, 700)
    area.show()
    app.processEvents()
    return area


def redraw_ms(app: QApplication, make: Callable[[], tuple[QWidget, Callable[[str], None]]],
              steps: list[str], at: list[int]) -> list[float]:
    """Milliseconds one step takes at the steps ``at`` (median of the 3 steps there)."""
    widget, show = make()
    area = shown(app, widget)
    took: list[float] = []
    for text in steps:
        start = time.perf_counter()
        show(text)
        app.processEvents()
        took.append((time.perf_counter() - start) * 1000)
    area.close()
    return [statistics.median(took[i - 3:i]) for i in at]


def finish_ms(app: QApplication, steps: list[str]) -> float:
    """Milliseconds the end of a reply takes (``finish``, laid out and shown) after it streamed
    to ``steps[-1]``."""
    widget = MessageWidget("assistant")
    area = shown(app, widget)
    for text in [*steps[::3], steps[-1]]:
        widget.show_streaming(text)
        app.processEvents()
    start = time.perf_counter()
    widget.finish(steps[-1], "512 tokens · first token 40 ms · 70.1 tok/s")
    app.processEvents()
    took = (time.perf_counter() - start) * 1000
    area.close()
    return took


def main() -> None:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    cases = [  # (the steps, and the steps measured with their names)
        (prose(60), [(3 * n, f"{n} paragraphs") for n in (10, 30, 60)]),
        (code(400), [(n, f"{n} code lines") for n in (100, 200, 400)]),
        (paragraph(15000), [(n, f"one paragraph of {100 * n:,} characters")
                            for n in (20, 60, 150)]),
    ]
    print("one redraw of a streaming reply, ms (median of 3 steps at that length)\n")
    print("| reply so far | one label for the reply (before) | message widget | ratio |\n"
          "|---|---:|---:|---:|")
    for steps, marks in cases:
        at = [index for index, _ in marks]
        before = redraw_ms(app, one_label, steps, at)
        now = redraw_ms(app, message_widget, steps, at)
        for (_, name), b, n in zip(marks, before, now, strict=True):
            print(f"| {name} | {b:.1f} | {n:.1f} | {n / b:.2f} |")
    print("\nthe reply's end (finish: laid out as a finished message), ms, median of 3\n")
    print("| reply | characters | finish |\n|---|---:|---:|")
    for steps, name in ((prose(60), "60 paragraphs"), (code(400), "400 code lines"),
                        (paragraph(15000), "one paragraph of 15,000 characters")):
        took = statistics.median(finish_ms(app, steps) for _ in range(3))
        print(f"| {name} | {len(steps[-1]):,} | {took:.1f} |")

if __name__ == "__main__":
    main()
