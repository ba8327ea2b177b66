"""Hugging Face checkpoint → GGUF through llama.cpp's converter (the ``convert`` extra)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from app.core.gguf_info import read_model_info
from app.engine import convert as convert_mod
from app.engine.convert import (
    ConvertCancelled,
    Converted,
    ConvertError,
    check_ready,
    convert,
    find_checkpoint_problem,
    gguf_conflicts,
)
from app.engine.events import Progress
from app.engine.host import ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling
from app.hub.checkpoint import Checkpoint, fetch_checkpoint
from tests.helpers.fake_hub import FakeHub
from tests.helpers.hf_checkpoint import write_hf_llama


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama-hf")


def test_the_installed_converter_and_gguf_agree() -> None:
    check_ready()  # raises with the fix when the extra is missing or gguf was overwritten
    assert gguf_conflicts() == []


def test_an_overwritten_gguf_copy_is_detected(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    import gguf

    real = Path(gguf.__file__).with_name("constants.py")
    fake = tmp_path / "constants.py"
    fake.write_bytes(real.read_bytes() + b"\n# an older release\n")
    files = convert_mod.metadata.files(convert_mod.CONVERTER_DIST)
    assert files is not None
    entry = next(f for f in files if str(f) == "gguf/constants.py")
    monkeypatch.setattr(type(entry), "locate",
                        lambda self: fake if str(self) == "gguf/constants.py"
                        else self.dist.locate_file(self))
    assert gguf_conflicts() == ["gguf/constants.py"]
    with pytest.raises(ConvertError, match="force-reinstall"):
        check_ready()


def _generates(model: Path, tokens: int = 6) -> None:
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(model), n_ctx=128))
        reply = list(host.chat_stream([ChatMessage("user", "cats and dogs")],
                                      Sampling(max_tokens=tokens, ignore_eos=True)))[-1]
        assert isinstance(reply, ReplyDone) and reply.metrics.generated_tokens == tokens
    finally:
        host.shutdown()


@pytest.mark.parametrize("out_type", ["F16", "Q8_0"])
def test_checkpoint_converts_loads_and_generates(checkpoint: Path, tmp_path: Path,
                                                 out_type: str) -> None:
    out = tmp_path / f"tiny-{out_type}.gguf"
    events = list(convert(checkpoint, out, out_type))
    done = events[-1]
    assert isinstance(done, Converted) and done.path == out and done.size == out.stat().st_size
    progress = [e for e in events if isinstance(e, Progress)]
    planned = [p for p in progress if p.message.startswith("Preparing")]
    assert len(planned) == 21  # 2 blocks × 9 tensors + embeddings, output norm, output
    written = [p for p in progress if p.message == "Writing tensors"]
    assert written[-1].done == written[-1].total > 0
    info = read_model_info(out)
    assert info.architecture == "llama" and info.file_type == out_type
    assert info.n_layers == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    _generates(out)


def test_a_checkpoint_fetched_from_the_hub_converts_and_loads(checkpoint: Path,
                                                              tmp_path: Path) -> None:
    """The whole way in from Hugging Face, with the real client against the local hub."""
    repo = "org/tiny-llama-hf"
    hub = FakeHub()
    published = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    for name, data in published.items():
        hub.add(repo, name, data)
    hub.add(repo, "pytorch_model.bin", b"a pickle, never fetched")  # conversion reads safetensors
    hub.start()
    try:
        events = list(fetch_checkpoint(repo, tmp_path / "checkpoints", endpoint=hub.endpoint))
    finally:
        hub.stop()
    fetched = events[-1]
    assert isinstance(fetched, Checkpoint)
    assert fetched.folder == tmp_path / "checkpoints" / "org" / "tiny-llama-hf"
    assert sorted(fetched.files) == sorted(published)
    assert {p.name: p.read_bytes() for p in fetched.folder.iterdir()} == published
    assert hub.gets(repo, "pytorch_model.bin") == []
    progress = [e for e in events if not isinstance(e, Checkpoint)]
    assert progress[-1].done == progress[-1].total == sum(map(len, published.values()))

    out = tmp_path / "models" / "tiny-llama-hf-F16.gguf"
    done = list(convert(fetched.folder, out))[-1]
    assert isinstance(done, Converted)
    info = read_model_info(out)
    assert info.architecture == "llama" and info.file_type == "F16" and info.n_layers == 2
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    _generates(out)


def test_unsupported_architecture_is_named(checkpoint: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in checkpoint.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((odd / "config.json").read_text())
    cfg["architectures"] = ["FluxCapacitorForCausalLM"]
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="FluxCapacitorForCausalLM"):
        list(convert(odd, tmp_path / "out.gguf"))
    assert not (tmp_path / "out.gguf").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_not_a_checkpoint_is_explained(tmp_path: Path) -> None:
    assert "config.json" in (find_checkpoint_problem(tmp_path) or "")
    (tmp_path / "config.json").write_text("{}")
    assert "weights" in (find_checkpoint_problem(tmp_path) or "")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "tokenizer" in (find_checkpoint_problem(tmp_path) or "")
    with pytest.raises(ConvertError, match="tokenizer"):
        list(convert(tmp_path, tmp_path / "x.gguf"))
    with pytest.raises(ConvertError, match="Q4_K_M"):
        list(convert(tmp_path, tmp_path / "x.gguf", "Q4_K_M"))


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = convert_mod.importlib.util.find_spec
    monkeypatch.setattr(convert_mod.importlib.util, "find_spec",
                        lambda name: None if name == "torch" else real(name))
    with pytest.raises(ConvertError, match=r"torch.*quantdesk\[convert\]"):
        check_ready()


def test_cancel_leaves_nothing(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cancelled.gguf"
    stop = threading.Event()
    with pytest.raises(ConvertCancelled):
        for event in convert(checkpoint, out, cancel=stop.is_set):
            if isinstance(event, Progress):
                stop.set()
    assert list(tmp_path.iterdir()) == []
