"""``quantdesk --self-test``: the check the installers run on every bundle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app import selftest


def test_self_test_passes_on_this_installation(tmp_path: object) -> None:
    proc = subprocess.run([sys.executable, "-m", "app", "--self-test"], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["hardware", "engine", "database", "qt"]
    assert lines[-1].startswith("QuantDesk self-test passed: 4 checks")


def test_a_failing_check_gives_the_reason_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("app.core.embedded.embedded_model_path", lambda: None)
    monkeypatch.setattr(selftest, "CHECKS", (("engine", selftest._generate),
                                             ("database", selftest._database)))
    assert selftest.run() == 1
    out = capsys.readouterr().out
    assert "FAIL engine: the embedded model is missing" in out
    assert "ok   database" in out
    assert "self-test FAILED" in out
