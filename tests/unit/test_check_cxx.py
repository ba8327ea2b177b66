"""packaging/check-cxx.sh: the llama-cpp-python build refuses a compiler that links libstdc++
statically into shared libraries (each llama.cpp library would carry its own C++ runtime)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "check-cxx.sh"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the check runs where libstdc++ is the C++ runtime")


def check(*compilers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), sys.executable, *compilers],
                          capture_output=True, text=True, check=False, cwd="/")


def test_the_machines_compiler_links_the_cxx_runtime_as_a_shared_library() -> None:
    done = check("g++")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_compiler_that_links_it_statically_stops_the_build_saying_so(tmp_path: Path) -> None:
    wrapper = tmp_path / "g++-static"  # as a toolchain wrapper adding the flag would
    wrapper.write_text('#!/bin/sh\nexec g++ -static-libstdc++ "$@"\n')
    wrapper.chmod(0o755)
    done = check("g++", str(wrapper))
    assert done.returncode == 1
    assert f"{wrapper} links libstdc++ statically" in done.stderr
    assert "CXX" in done.stderr and "CUDAHOSTCXX" in done.stderr


def test_a_compiler_given_as_a_command_with_words_is_run_as_one() -> None:
    assert check("env g++").returncode == 0
