"""The library finds models where they lie: app folder, Hugging Face cache, user folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from app.core import paths
from app.core.library import SOURCE_APP, SOURCE_HF, Library, removal_plan, remove
from tests.unit.test_gguf_info import _write_split


def _hf_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """The layout huggingface-hub writes: blobs, snapshot symlinks, refs."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    rev = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snapshot = repo / "snapshots" / rev
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, (name, source) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:064x}"
        shutil.copyfile(source, blob)
        (snapshot / name).symlink_to(Path("../../blobs") / blob.name)
    return root


def test_scan_finds_every_place_and_skips_what_is_not_a_model(
        tiny_model: Path, smollm2: Path, tmp_path: Path) -> None:
    shutil.copyfile(tiny_model, paths.models_dir() / "tiny.gguf")
    (paths.models_dir() / ".tiny2.gguf.x1.part").write_bytes(b"partial download")
    cache = _hf_cache(tmp_path / "hf", "org/tiny-GGUF", {"tiny-Q8_0.gguf": tiny_model,
                                                         "README.md": tiny_model})
    lmstudio = tmp_path / "lmstudio" / "models" / "publisher" / "repo"
    lmstudio.mkdir(parents=True)
    shutil.copyfile(smollm2, lmstudio / "smol.gguf")
    (lmstudio / "mmproj-smol-f16.gguf").write_bytes(b"projector")
    (lmstudio / "broken.gguf").write_bytes(b"not a model")
    _write_split(lmstudio, 2)

    entries = Library([str(tmp_path / "lmstudio")], hf_cache_dir=cache).scan()
    by_name = {e.path.name: e for e in entries}
    assert set(by_name) == {"tiny.gguf", "tiny-Q8_0.gguf", "smol.gguf", "broken.gguf",
                            "tiny-00001-of-00002.gguf"}
    assert by_name["tiny.gguf"].source == SOURCE_APP
    assert by_name["tiny-Q8_0.gguf"].source == SOURCE_HF
    assert by_name["tiny-Q8_0.gguf"].repo_id == "org/tiny-GGUF"
    assert by_name["smol.gguf"].info is not None
    assert by_name["smol.gguf"].info.file_type == "Q4_1"
    assert by_name["broken.gguf"].info is None
    assert "not a GGUF" in (by_name["broken.gguf"].error or "")
    split = by_name["tiny-00001-of-00002.gguf"]
    assert split.info is not None and split.info.split_count == 2 and split.name == "tiny"


def test_same_file_through_two_places_is_listed_once(tiny_model: Path, tmp_path: Path) -> None:
    shutil.copyfile(tiny_model, paths.models_dir() / "tiny.gguf")
    entries = Library([str(paths.models_dir())]).scan()
    assert [e.source for e in entries] == [SOURCE_APP]


def test_missing_user_folder_is_not_an_error(tmp_path: Path) -> None:
    assert Library([str(tmp_path / "gone")]).scan() == []


def test_remove_deletes_split_parts_and_hf_blobs(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    _write_split(folder, 2)
    cache = _hf_cache(tmp_path / "hf", "org/tiny", {"tiny.gguf": tiny_model})
    entries = Library([str(folder)], hf_cache_dir=cache).scan()
    for entry in entries:
        remove(entry)
    assert list(folder.iterdir()) == []
    blobs = cache / "models--org--tiny" / "blobs"
    assert list(blobs.iterdir()) == []
    assert Library([str(folder)], hf_cache_dir=cache).scan() == []


def _files(root: Path) -> set[Path]:
    """Every file and link under ``root`` (links not followed)."""
    return {p for p in root.rglob("*") if p.is_symlink() or p.is_file()}


def test_importance_matrices_are_not_models(tiny_model: Path) -> None:
    shutil.copyfile(tiny_model, paths.models_dir() / "tiny.gguf")
    shutil.copyfile(tiny_model, paths.models_dir() / "tiny.imatrix.gguf")
    shutil.copyfile(tiny_model, paths.models_dir() / "imatrix.gguf")
    assert [e.path.name for e in Library().scan() if e.source == SOURCE_APP] == ["tiny.gguf"]


def test_split_model_still_downloading_is_not_listed_but_an_incomplete_one_is_explained(
        tmp_path: Path) -> None:
    downloading, incomplete = tmp_path / "dl", tmp_path / "gone"
    for folder in (downloading, incomplete):
        folder.mkdir()
        parts = _write_split(folder, 3)
        parts[2].unlink()
    # the third part of the first set is on its way (app.hub.download's NAME.part)
    (downloading / "tiny-00003-of-00003.gguf.part").write_bytes(b"half")
    entries = Library([str(downloading), str(incomplete)]).scan()
    assert [e.path.parent for e in entries] == [incomplete]
    assert entries[0].info is None and "00003-of-00003.gguf is missing" in (entries[0].error or "")


def test_removal_plan_of_a_plain_file_and_of_split_parts(tiny_model: Path,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(tiny_model, folder / "plain.gguf")
    (folder / "whole").mkdir()
    (folder / "broken").mkdir()
    whole = _write_split(folder / "whole", 2)
    broken = _write_split(folder / "broken", 3)
    broken[1].unlink()  # unreadable now: its other parts still belong to it
    plans = {e.path: removal_plan(e) for e in Library([str(folder)]).scan()}
    assert plans == {folder / "plain.gguf": [folder / "plain.gguf"],
                     whole[0]: whole, broken[0]: [broken[0], broken[2]]}


def test_removing_a_link_removes_only_the_link(tiny_model: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.gguf"
    shutil.copyfile(tiny_model, real)
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "linked.gguf").symlink_to(real)
    [entry] = Library([str(folder)]).scan()
    assert removal_plan(entry) == [folder / "linked.gguf"]
    assert remove(entry) == [folder / "linked.gguf"]
    assert not os.path.lexists(folder / "linked.gguf")
    assert real.read_bytes() == tiny_model.read_bytes()


def _second_revision(cache: Path, repo_id: str, names: list[str]) -> Path:
    """Another revision whose snapshot links ``names`` to the same blobs as the first."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    first = next((repo / "snapshots").iterdir())
    snapshot = repo / "snapshots" / ("b" * 40)
    snapshot.mkdir()
    for name in names:
        (snapshot / name).symlink_to((first / name).readlink())
    return snapshot


def test_hf_cache_blob_goes_only_with_its_last_link(tiny_model: Path, tmp_path: Path) -> None:
    cache = _hf_cache(tmp_path / "hf", "org/alone", {"alone.gguf": tiny_model})
    _hf_cache(cache, "org/shared", {"shared.gguf": tiny_model})
    other = _second_revision(cache, "org/shared", ["shared.gguf"])
    before = _files(cache)
    entries = {e.path.name: e for e in Library(hf_cache_dir=cache).scan()
               if e.source == SOURCE_HF}
    alone, shared = entries["alone.gguf"], entries["shared.gguf"]
    alone_blob = alone.path.resolve()
    assert removal_plan(alone) == [alone.path, alone_blob]
    assert removal_plan(shared) == [shared.path]  # the other revision still needs the blob
    for entry in (alone, shared):
        remove(entry, removal_plan(entry))
    assert before - _files(cache) == {alone.path, alone_blob, shared.path}
    assert (other / "shared.gguf").read_bytes() == tiny_model.read_bytes()


def test_remove_deletes_exactly_the_plan_it_is_given(tiny_model: Path, tmp_path: Path) -> None:
    """What the person confirmed is what goes, even if the plan would now be different."""
    cache = _hf_cache(tmp_path / "hf", "org/m", {"m.gguf": tiny_model})
    [entry] = [e for e in Library(hf_cache_dir=cache).scan() if e.source == SOURCE_HF]
    shown = [entry.path]  # say the dialog showed only the link
    before = _files(cache)
    assert remove(entry, shown) == shown
    assert before - _files(cache) == set(shown)
