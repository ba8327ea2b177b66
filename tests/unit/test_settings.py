"""Settings: defaults, round trip, and a broken file that loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

from app.core import paths, settings
from app.core.atomic import atomic_output


def test_home_follows_the_environment(quantdesk_home: Path) -> None:
    assert paths.data_home() == quantdesk_home
    assert paths.models_dir().parent == quantdesk_home


def test_defaults_when_missing() -> None:
    assert settings.load() == settings.Settings()


def test_round_trip() -> None:
    s = settings.Settings(n_ctx=8192, model_folders=["/models"], temperature=0.2)
    settings.save(s)
    assert settings.load() == s
    assert json.loads(paths.settings_path().read_text())["schema_version"] == 1


def test_broken_file_is_kept_aside_and_defaults_used() -> None:
    path = paths.settings_path()
    path.write_text("{ not json")
    assert settings.load() == settings.Settings()
    assert path.with_name("settings.json.broken").read_text() == "{ not json"


def test_wrong_type_is_treated_as_broken() -> None:
    paths.settings_path().write_text(json.dumps({"n_ctx": "big"}))
    assert settings.load().n_ctx == settings.Settings().n_ctx


def test_atomic_output_leaves_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"original")
    try:
        with atomic_output(target) as handle:
            handle.write(b"half")
            raise OSError(28, "No space left on device")
    except OSError:
        pass
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
