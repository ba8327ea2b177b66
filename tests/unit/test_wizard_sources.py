"""The wizard's Hugging Face sources, end to end against the local hub server: a repo with an
F16 GGUF (downloaded and used as the reference) and a repo with a safetensors checkpoint
(fetched and converted first)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import paths
from app.core.storage import Storage
from app.engine.probe import full_profile
from app.pipeline import events as ev
from app.pipeline import plans, wizard
from app.pipeline.runner import Runner
from tests.helpers.fake_hub import FakeHub


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    yield server
    server.stop()


def _run(choice: wizard.WizardChoice) -> tuple[plans.RunPlan, dict[str, dict]]:
    store = Storage()
    plan = wizard.wizard_plan(choice)
    run_id = plans.create(store, plan)
    events = list(Runner().run(run_id))
    store.close()
    assert isinstance(events[-1], ev.RunFinished)
    return plan, events[-1].outputs


def test_a_repo_with_an_f16_gguf_is_downloaded_and_becomes_the_reference(
        hub: FakeHub, tiny_model_f16: Path) -> None:
    data = tiny_model_f16.read_bytes()
    hub.add("org/tiny-gguf", "tiny-llama-F16.gguf", data)
    hub.add("org/tiny-gguf", "tiny-llama-Q8_0.gguf", b"not fetched")
    hub.start()
    source = wizard.resolve("org/tiny-gguf", endpoint=hub.endpoint)
    assert source.kind == "repo-gguf" and source.precision == "F16"
    assert source.files == ("tiny-llama-F16.gguf",) and source.size == len(data)
    options = wizard.type_options(source, full_profile(), imatrix=False)
    assert any(o.ticked for o in options) and all(o.size > 0 for o in options)
    plan, outputs = _run(wizard.WizardChoice(source, ("Q8_0",), imatrix=False))
    assert [s.kind for s in plan.steps][:2] == ["download", "quantize"]
    downloaded = Path(outputs["download"]["path"])
    assert downloaded == paths.models_dir() / "org" / "tiny-gguf" / "tiny-llama-F16.gguf"
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == \
        hashlib.sha256(data).hexdigest()
    assert hub.gets("org/tiny-gguf", "tiny-llama-Q8_0.gguf") == []
    assert outputs["summary"]["evaluation_id"]


def test_a_repo_with_a_checkpoint_is_fetched_and_converted_first(
        hub: FakeHub, tmp_path: Path) -> None:
    from tests.helpers.hf_checkpoint import write_hf_llama  # the convert extra (make test)

    folder = write_hf_llama(tmp_path / "ckpt")
    for file in folder.iterdir():
        hub.add("org/tiny-hf", file.name, file.read_bytes())
    hub.start()
    source = wizard.resolve("org/tiny-hf", endpoint=hub.endpoint)
    assert source.kind == "repo-checkpoint" and "converted" in source.notes[0]
    plan, outputs = _run(wizard.WizardChoice(source, ("Q8_0",), imatrix=False))
    assert [s.kind for s in plan.steps][:3] == ["checkpoint", "convert", "quantize"]
    assert Path(outputs["checkpoint"]["folder"]) == paths.checkpoints_dir() / "org" / "tiny-hf"
    assert Path(outputs["convert"]["path"]).name == "tiny-hf-F16.gguf"
    assert outputs["summary"]["evaluation_id"]
