"""Time from process start to the main window shown with the embedded model listed, and on to
the embedded model loaded and ready to chat. One first run, then warm runs (files cached).
Target: under 2 s warm to the window.

    .venv/bin/python -m bench.startup [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child() -> None:
    """Start the app as `quantdesk` does and report the two times (seconds since exec)."""
    import psutil

    started = psutil.Process().create_time()
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.ui.main import create_window

    app = QApplication(sys.argv)
    window = create_window()
    window.show()
    picker = window.chat_page.model_bar.picker
    result: dict[str, float] = {}

    def shown() -> None:
        listed = any("SmolLM2" in picker.itemText(i) for i in range(picker.count()))
        if window.isVisible() and listed:
            result["window"] = time.time() - started

    def loaded(_event: object) -> None:
        result["ready"] = time.time() - started
        print(json.dumps(result), flush=True)
        window.close()
        app.quit()

    QTimer.singleShot(0, shown)
    window.chat_page.model_loaded.connect(loaded)
    app.exec()
    os._exit(0)


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        child()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    rows = []
    for _ in range(args.runs + 1):
        env["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-start-")
        out = subprocess.run([sys.executable, "-m", "bench.startup", "--child"], env=env,
                             capture_output=True, text=True, check=True, timeout=120)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    warm = rows[1:]
    print(f"platform: {env['QT_QPA_PLATFORM']}; a fresh data folder each run")
    print("| run | window shown, embedded model listed (s) | embedded model loaded (s) |\n"
          "|---|---:|---:|")
    print(f"| first | {rows[0]['window']:.2f} | {rows[0]['ready']:.2f} |")
    print(f"| warm, median of {len(warm)} | {statistics.median(r['window'] for r in warm):.2f} "
          f"| {statistics.median(r['ready'] for r in warm):.2f} |")
    print(f"| warm, max | {max(r['window'] for r in warm):.2f} "
          f"| {max(r['ready'] for r in warm):.2f} |")


if __name__ == "__main__":
    main()
