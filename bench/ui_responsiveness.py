"""Does the UI stay responsive while a reply streams at full speed, and how fast does the reply
reach it?

The chat page (with the app's stylesheet) streams a long reply, in the window's own event loop,
while a 5 ms heartbeat QTimer runs in the GUI process; the stall is how late each beat fires
beyond its interval. Then it streams the reply again ROUNDS times with nothing else running,
each right after a llama-bench run of the same length (llama.cpp's decode rate, the model
loaded the same way): the heartbeat's 200 wake-ups a second take a core from llama.cpp's
threads on a small machine, so the speed is measured without it, and each reply is set
against the llama.cpp run beside it, so the machine's drift over a minute does not land on one
side. The ratio shown is the median of the rounds. Run on the tiny model (thousands of tokens
a second: the worst case for the UI) and on SmolLM2 (a real model's pace), each in a fresh
process. Targets: the maximum stall stays under 50 ms; the tiny model's reply reaches the page
at 0.9 of llama.cpp's rate (issue 17). Also shown: the GUI process's CPU use while streaming
(on a small machine it competes with llama.cpp's threads), the ratio of each round's reply
streamed again with the page hidden (the window's work but drawing it: the message saved, the
list of conversations, its events), and of its request sent again to the engine with no page
(what the window's work costs, apart from the engine's).

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.ui_responsiveness
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Every run (each in its own process) gets an empty data folder: no earlier conversation is
# reopened and carried into the prompt.
os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-")

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from app.core.embedded import embedded_model_path
from app.core.settings import Settings
from app.core.storage import Storage
from app.engine.protocol import ChatMessage
from app.jobs.engine_client import EngineClient
from app.ui.chat.chat_page import ChatPage
from app.ui.main import apply_style
from tests.helpers.tiny_model import write_tiny_llama

BEAT_MS = 5
N_CTX = 4096  # the chat's context in this bench
MESSAGE = "Write a long essay about rivers, mountains and the sea."
ROUNDS = 5  # replies timed against llama-bench, each beside its own llama-bench run


def run_until(signal: object, timeout: float) -> list[object]:
    """Run the event loop (as the app does) until ``signal`` fires; what it carried."""
    loop = QEventLoop()
    got: list[object] = []

    def fired(*args: object) -> None:
        got.extend(args)
        loop.quit()

    signal.connect(fired)  # type: ignore[attr-defined]
    QTimer.singleShot(round(timeout * 1000), loop.quit)
    loop.exec()
    signal.disconnect(fired)  # type: ignore[attr-defined]
    if not got:
        raise SystemExit(f"nothing within {timeout:.0f} s")
    return got


def measure(app: QApplication, model: Path, max_tokens: int) -> dict[str, Any]:
    engine = EngineClient()
    page = ChatPage(Storage(), engine, Settings(max_tokens=max_tokens, n_ctx=N_CTX), model)
    page.resize(1000, 700)
    page.show()
    if engine.current is None:
        run_until(engine.loaded, 60)
    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(BEAT_MS)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    stream(page)  # with the heartbeat: the stalls
    timer.stop()
    gaps = [(b - a) * 1000 - BEAT_MS for a, b in itertools.pairwise(beats)]
    rounds: list[dict[str, float]] = []
    hidden: list[float] = []
    alone: list[float] = []
    llamas: list[float] = []
    for _ in range(ROUNDS):  # alone: the speed, each beside llama.cpp's
        llama = llama_decode_rate(model, max_tokens, 48, repetitions=1)
        page.new_conversation()
        rounds.append(stream(page))
        # the same with the page hidden: the window's work but drawing (the reply, its end)
        page.hide()
        page.new_conversation()
        hidden.append(stream(page)["tok/s"])
        page.show()
        # the same request with no page: the engine and its events alone, in this process
        alone.append(engine_alone(page))
        if llama is not None:
            llamas.append(llama)
    page.shutdown()
    page.close()
    result: dict[str, Any] = {key: statistics.median(r[key] for r in rounds)
                              for key in ("tokens", "events", "tok/s", "decode", "gui_cpu")}
    ratios = [r["tok/s"] / llama for r, llama in zip(rounds, llamas, strict=False)]
    undrawn = [rate / llama for rate, llama in zip(hidden, llamas, strict=False)]
    unseen = [rate / llama for rate, llama in zip(alone, llamas, strict=False)]
    return result | {"llama": statistics.median(llamas) if llamas else None,
                     "ratio": statistics.median(ratios) if ratios else None,
                     "ratio_hidden": statistics.median(undrawn) if undrawn else None,
                     "ratio_alone": statistics.median(unseen) if unseen else None,
                     "ratios": ratios,
                     "max_stall_ms": max(gaps),
                     "p99_stall_ms": statistics.quantiles(gaps, n=100)[98],
                     "median_stall_ms": statistics.median(gaps)}


def stream(page: ChatPage) -> dict[str, float]:
    """Send the message, wait for the reply in the event loop: its tokens, events, speed."""
    events: list[int] = []
    count = page.engine.token.connect(lambda *_: events.append(1))
    cpu_before = psutil.Process().cpu_times()
    start = time.perf_counter()
    page.send(MESSAGE)
    reply = run_until(page.reply_finished, 300)[0]
    elapsed = time.perf_counter() - start
    cpu_after = psutil.Process().cpu_times()
    page.engine.token.disconnect(count)
    metrics = reply.metrics or {}  # type: ignore[attr-defined]
    # a slow reader gets several tokens per event (app/engine/host_child.py): count tokens
    # from the reply's metrics, events as they arrived
    n_tokens = int(metrics.get("generated_tokens", 0))
    return {"tokens": n_tokens, "events": len(events), "seconds": elapsed,
            "tok/s": n_tokens / elapsed,
            "decode": metrics.get("generation_tokens_per_second", 0.0),
            "gui_cpu": (cpu_after.user + cpu_after.system - cpu_before.user
                        - cpu_before.system) / elapsed}


def engine_alone(page: ChatPage) -> float:
    """The rate of the page's request (its model, message and sampling, a new conversation)
    sent to the engine with no page to draw it: what the window's work costs, apart."""
    engine = page.engine
    message = ChatMessage("user", MESSAGE)
    start = time.perf_counter()
    engine.chat([message], page.session.sampling())
    done = run_until(engine.reply_done, 300)[0]
    return done.metrics.generated_tokens / (time.perf_counter() - start)  # type: ignore[attr-defined]


def child(model: str, max_tokens: int) -> None:
    """Measure one model in this (fresh) process and print the result as JSON."""
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    apply_style(app)  # painted as the app paints it: the stylesheet decides what a frame costs
    print(json.dumps(measure(app, Path(model), max_tokens)), flush=True)
    os._exit(0)  # skip interpreter teardown: nothing left to save


def llama_decode_rate(model: Path, tokens: int, depth: int, repetitions: int = 3
                      ) -> float | None:
    """llama.cpp's own generation rate (llama-bench tg of ``tokens`` after ``depth`` tokens of
    context, the mean of ``repetitions``), or None without the tool."""
    from bench._llama_tools import engine_flash_attn, run_timed, tool

    exe = tool("llama-bench")
    if exe is None:
        return None
    fa = engine_flash_attn(model, N_CTX)
    _, out = run_timed([str(exe), "-m", str(model), "-t", "2", "-fa", fa,
                        "-p", "0", "-n", str(tokens), "-d", str(depth), "-r", str(repetitions),
                        "-o", "json"])
    return float(json.loads(out[out.index("["):out.rindex("]") + 1])[0]["avg_ts"])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    tiny = write_tiny_llama(Path(tempfile.mkdtemp()) / "tiny.gguf", n_ctx=4096)
    runs = [("tiny (random weights)", tiny, 3000)]
    smol = embedded_model_path()
    if smol is not None:
        runs.append(("SmolLM2-135M Q4_1", smol, 400))
    rows = []
    for name, model, max_tokens in runs:
        out = subprocess.run([sys.executable, "-m", "bench.ui_responsiveness", "--child",
                              str(model), str(max_tokens)], capture_output=True, text=True,
                             check=True)
        rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"stall = lateness of a {BEAT_MS} ms heartbeat while a reply streams; speed, events "
          f"and GUI CPU: medians of {ROUNDS} replies streamed without it, each right after a "
          "llama-bench run of the same length (ratio: the median of each reply's against its "
          "run)")
    print("| model | tokens (events) | tok/s seen by the UI | llama-bench tg (same length) "
          "| ratio (rounds) | ratio, page hidden | ratio, engine alone | engine decode tok/s "
          "| GUI CPU | median stall ms | p99 stall ms | max stall ms |"
          "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        base = r["llama"]
        ratio = (f"**{r['ratio']:.2f}** ({', '.join(f'{x:.2f}' for x in r['ratios'])})"
                 if base else "–")
        alone = f"{r['ratio_alone']:.2f}" if base else "–"
        undrawn = f"{r['ratio_hidden']:.2f}" if base else "–"
        print(f"| {name} | {r['tokens']:.0f} ({r['events']:.0f}) | {r['tok/s']:.0f} | "
              f"{f'{base:.0f}' if base else '–'} | {ratio} | {undrawn} | {alone} "
              f"| {r['decode']:.0f} "
              f"| {r['gui_cpu']:.0%} | {r['median_stall_ms']:.1f} | {r['p99_stall_ms']:.1f} "
              f"| {r['max_stall_ms']:.1f} |")


if __name__ == "__main__":
    main()
