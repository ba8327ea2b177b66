"""`quantdesk wizard` as a user runs it, killed in the middle and resumed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TYPES = "Q8_0,Q4_0,Q2_K"


def _wizard(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "wizard", *args],
                          env={**os.environ, "QUANTDESK_HOME": str(home)}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _steps(home: Path) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(home / "quantdesk.sqlite3", timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return {r["key"]: r for r in db.execute("SELECT * FROM steps ORDER BY position")}
    except sqlite3.OperationalError:  # the app has not created its tables yet
        return {}
    finally:
        db.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quality(result: dict) -> dict[str, float]:
    """PPL of every variant and KLD of each candidate, by type."""
    variants = [result["evaluation"]["reference"], *result["evaluation"]["candidates"]]
    found = {f"{v['quant']} ppl": v["quality"]["ppl"] for v in variants}
    found.update({f"{v['quant']} kld": v["quality"]["kld_mean"]
                  for v in result["evaluation"]["candidates"]})
    return found


def test_a_wizard_killed_while_quantizing_resumes_where_it_stopped(
        tiny_model_f16: Path, tmp_path: Path) -> None:
    home = tmp_path / "killed"
    args = [str(tiny_model_f16), "--types", TYPES, "--eval", "quick", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "app", "wizard", *args],
                            env={**os.environ, "QUANTDESK_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed_during = None
    while time.monotonic() < deadline and proc.poll() is None:
        if (home / "quantdesk.sqlite3").exists():
            with_status = {k: r["status"] for k, r in _steps(home).items()}
            if with_status.get("quantize:Q4_0") == "running":
                proc.send_signal(signal.SIGKILL)
                killed_during = "quantize:Q4_0"
                break
        time.sleep(0.005)
    proc.wait(30)
    assert killed_during, f"the run ended before it could be killed: {proc.stderr.read()}"
    before = _steps(home)
    finished = [k for k, r in before.items() if r["status"] == "done"]
    assert finished == ["imatrix", "quantize:Q8_0"]
    assert before["quantize:Q4_0"]["status"] == "running"  # the kill left it as it was
    files = {k: Path(json.loads(before[k]["outputs_json"])["path"]) for k in finished}
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items()}

    resumed = _wizard(home, "--resume", str(before["imatrix"]["run_id"]), "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    after = _steps(home)
    assert all(r["status"] == "done" for r in after.values())
    for key in finished:  # not computed again: the same record, the same file
        assert after[key]["finished_at"] == before[key]["finished_at"]
        assert after[key]["seconds"] == before[key]["seconds"] > 0
        assert files[key].stat().st_mtime_ns == stamps[key]
    assert not list(home.rglob("*.part")), "a partial file was left behind"

    whole = _wizard(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr
    uninterrupted = json.loads(whole.stdout)
    assert _quality(result) == pytest.approx(_quality(uninterrupted), rel=1e-6)
    for quant in TYPES.split(","):
        name = f"tiny-llama-{quant}-imat.gguf"
        resumed_file = home / "models" / "tiny-llama" / name
        fresh_file = tmp_path / "whole" / "models" / "tiny-llama" / name
        assert _sha256(resumed_file) == _sha256(fresh_file)
    assert result["recommendation"]["reason"]


def test_the_wizard_explains_a_type_it_will_not_make(smollm2: Path, tmp_path: Path) -> None:
    result = _wizard(tmp_path / "home", str(smollm2), "--types", "Q8_0", "--json")
    assert result.returncode == 2
    assert "Q8_0: As large as your Q4_1 file or larger" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_of_an_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    result = _wizard(tmp_path / "home", "--resume", "42")
    assert result.returncode == 2 and "there is no run 42" in result.stderr
