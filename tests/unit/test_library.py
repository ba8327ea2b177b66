"""The library finds models where they lie: app folder, Hugging Face cache, user folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.core import paths
from app.core.library import SOURCE_APP, SOURCE_HF, Library, remove
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
