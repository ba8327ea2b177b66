"""The CLI as a user runs it: a separate process, exit codes, JSON on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_hw_json_has_the_profile() -> None:
    result = _run("hw", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu"]["logical_cores"] >= 1
    assert data["ram_total"] >= data["ram_available"] > 0
    assert "CPU" in data["llama"]["backends"]
    assert any(d["kind"] == "cpu" for d in data["llama"]["devices"])
    assert data["capacity"].startswith("This machine can run models up to about")
    assert isinstance(data["advice"], list) and isinstance(data["notes"], list)


def test_hw_text() -> None:
    result = _run("hw")
    assert result.returncode == 0, result.stderr
    assert "CPU:" in result.stdout and "llama.cpp:" in result.stdout


def test_inspect_json_of_embedded_model(smollm2: Path) -> None:
    result = _run("inspect", str(smollm2), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["architecture"] == "llama"
    assert data["file_type"] == "Q4_1"
    assert data["n_layers"] == 30 and data["n_vocab"] == 49152
    assert {t["type"] for t in data["tensor_types"]} == {"Q4_1", "Q8_0", "F32"}
    assert data["has_chat_template"] is True
    assert 5.0 < data["bits_per_weight"] < 6.5


def test_inspect_broken_file_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_text("hello")
    result = _run("inspect", str(bad))
    assert result.returncode == 2
    assert "not a GGUF model file" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_chat_json_with_the_embedded_model(smollm2: Path) -> None:
    result = _run("chat", str(smollm2), "--system", "You are a helpful assistant.",
                  "--prompt", "What is the capital of France? Answer in one short sentence.",
                  "--temperature", "0", "--max-tokens", "48", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Paris" in data["reply"]
    assert data["finish_reason"] == "stop"
    m = data["metrics"]
    assert 0 < m["generated_tokens"] < 48
    assert m["prompt_tokens"] > 5 and m["generation_tokens_per_second"] > 0
    assert m["peak_rss_bytes"] > 50 * 1024**2


def test_chat_streams_text_and_prints_metrics(tiny_model: Path) -> None:
    result = _run("chat", str(tiny_model), "--prompt", "hi", "--max-tokens", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "10 tokens" in result.stderr and "length" in result.stderr


def test_chat_with_a_broken_model_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    result = _run("chat", str(bad), "--prompt", "hi")
    assert result.returncode == 3
    assert "could not be loaded" in result.stderr
    assert "Traceback" not in result.stderr


def test_fit_json_for_the_embedded_model(smollm2: Path) -> None:
    result = _run("fit", str(smollm2), "--ctx", "2048", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["fit"] == "ram" and data["n_ctx"] == 2048  # this machine has no GPU
    cpu = data["estimate"]["cpu"]
    assert cpu["kv_cache"] == 2048 * 30 * 3 * 128 * 2
    assert cpu["total"] == data["estimate"]["total"] > cpu["weights"]
    assert data["explanation"][0].startswith("Runs on the CPU")


def test_fit_text_and_bad_file(smollm2: Path, tmp_path: Path) -> None:
    result = _run("fit", str(smollm2))
    assert result.returncode == 0 and "Fits in RAM" in result.stdout
    bad = tmp_path / "x.gguf"
    bad.write_text("nope")
    assert _run("fit", str(bad)).returncode == 2


def test_recommend_json() -> None:
    result = _run("recommend", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu_bandwidth_gbps"] > 1
    recs = data["recommendations"]
    assert recs and all(r["fit"] in ("gpu", "ram", "partial") for r in recs)
    assert sum(r["top_pick"] for r in recs) <= 1
    assert all(r["gguf_repo"] and r["reason"].startswith(f"{r['quant']}: ") for r in recs)


def test_quantize_two_types_json_and_dry_run(tiny_model_f16: Path, tmp_path: Path) -> None:
    result = _run("quantize", str(tiny_model_f16), "--type", "Q8_0", "--type", "q4_k_m",
                  "--override", "attn_v=Q8_0", "--out-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [d["quant"] for d in data] == ["Q8_0", "Q4_K_M"]
    assert Path(data[1]["path"]).name == "tiny-llama-Q4_K_M.gguf"  # F16 in the name replaced
    dry = _run("quantize", str(tiny_model_f16), "--type", "Q4_K_M", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)[0]["bits_per_weight"] > 4


def test_quantize_refuses_requantizing_with_a_clear_message(smollm2: Path, tmp_path: Path
                                                            ) -> None:
    result = _run("quantize", str(smollm2), "--type", "Q8_0", "--out-dir", str(tmp_path))
    assert result.returncode == 2
    assert "already quantized" in result.stderr and "Traceback" not in result.stderr


def test_dequantize_writes_f16(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "t16.gguf"
    result = _run("dequantize", str(tiny_model), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(_run("inspect", str(out), "--json").stdout)["file_type"] == "F16"


def test_layers_json_and_table(tiny_model_f16: Path, tmp_path: Path) -> None:
    quantized = _run("quantize", str(tiny_model_f16), "--type", "Q4_0", "--out-dir",
                     str(tmp_path), "--json")
    assert quantized.returncode == 0, quantized.stderr
    candidate = json.loads(quantized.stdout)[0]["path"]
    result = _run("layers", str(tiny_model_f16), candidate, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert not data["sampled"] and len(data["tensors"]) == 2 * 7 + 2
    assert all(0 < t["rel_error"] < 0.2 for t in data["tensors"])
    table = _run("layers", str(tiny_model_f16), candidate, "--max-values", "4096")
    assert table.returncode == 0, table.stderr
    assert "sampled by rows" in table.stdout and "ffn_down" in table.stdout
    assert "token_embd.weight: F16 → Q4_0" in table.stdout
    other = _run("layers", str(tiny_model_f16), str(tmp_path / "missing.gguf"))
    assert other.returncode == 2 and "does not exist" in other.stderr
