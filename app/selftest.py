"""``quantdesk --self-test``: prove an installation works, without a screen.

Checks, in order, each with a time limit: the hardware probe (in a child, as the app does),
the embedded model loaded in the engine child and a few tokens generated, the database written
and read back in a temporary home, and Qt's offscreen platform creating the main window's
widgets. Prints one line per check and a summary line; exits 0 when all pass, else 1 with the
reason. The installers' CI jobs run it on every bundle.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable


def _probe() -> str:
    from app.engine.probe import full_profile

    profile = full_profile()
    if profile.llama is not None and profile.llama.problems:  # an installer with other bindings
        raise RuntimeError("llama-cpp-python differs from the tested one: "
                           + "; ".join(profile.llama.problems))
    backends = ", ".join(profile.llama.backends) if profile.llama else "none"
    return (f"{profile.cpu.model or 'CPU'}, {profile.ram_total / 2**30:.0f} GiB, "
            f"llama.cpp backends: {backends}")


def _generate() -> str:
    from app.core.embedded import embedded_model_path
    from app.engine.host import ModelHost
    from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling

    model = embedded_model_path()
    if model is None:
        raise RuntimeError("the embedded model is missing from this installation")
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(model), n_ctx=512), timeout=120)
        events = list(host.chat_stream([ChatMessage("user", "Say hello.")],
                                       Sampling(max_tokens=8, temperature=0.0,
                                                ignore_eos=True), timeout=120))
    finally:
        host.shutdown()
    done = events[-1]
    if not isinstance(done, ReplyDone) or done.metrics.generated_tokens < 1:
        raise RuntimeError(f"no tokens were generated ({done!r})")
    from app.engine import token_loop

    # an installer built without a C compiler still generates, in Python: say which it is
    loop = "C" if token_loop.available() else "Python"
    return (f"{done.metrics.generated_tokens} tokens at "
            f"{done.metrics.generation_tokens_per_second:.1f} tok/s from {model.name} "
            f"(token loop in {loop})")


def _database() -> str:
    from app.core.storage import Storage

    store = Storage()
    conv = store.create_conversation("self-test")
    store.add_message(conv.id, "user", "ping")
    store.close()
    again = Storage()
    messages = again.messages(conv.id)
    version = again.schema_version
    again.close()
    if [m.content for m in messages] != ["ping"]:
        raise RuntimeError("the message written was not read back")
    return f"schema {version}, write and read back ok"


def _gui() -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from app.core.resources import resource

    if QApplication.instance() is None:
        QApplication([])
    from app.ui.compare.charts import QualityChart

    chart = QualityChart()
    chart.show_rows([])
    if not resource("style.qss").exists():
        raise RuntimeError("resources are missing from this installation")
    return f"Qt {__import__('PySide6').__version__} ({QGuiApplication.platformName()}), charts ok"


CHECKS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("hardware", _probe), ("engine", _generate), ("database", _database), ("qt", _gui))


def run() -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantdesk-self-test-") as home:
        os.environ["QUANTDESK_HOME"] = home
        failures = []
        for name, check in CHECKS:
            t = time.perf_counter()
            try:
                detail = check()
            except Exception as exc:
                failures.append(f"{name}: {exc}")
                print(f"FAIL {name}: {exc}", flush=True)
                traceback.print_exc(file=sys.stderr)
            else:
                print(f"ok   {name} ({time.perf_counter() - t:.1f} s): {detail}", flush=True)
    seconds = time.perf_counter() - start
    if failures:
        print(f"QuantDesk self-test FAILED in {seconds:.1f} s: {'; '.join(failures)}")
        return 1
    print(f"QuantDesk self-test passed: {len(CHECKS)} checks in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run())
