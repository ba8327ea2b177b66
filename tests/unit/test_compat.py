"""The start-up check of what the engine relies on in llama-cpp-python."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import types
from pathlib import Path

import llama_cpp
import pytest

from app.engine import compat
from app.engine.runner import GgmlTensor


def test_the_installed_build_has_everything_the_engine_relies_on() -> None:
    assert compat.problems() == []
    assert llama_cpp.__version__ == compat.TESTED_VERSION  # pyproject pins what was tested


def test_a_binding_without_a_function_or_field_is_named() -> None:
    stand_in = types.SimpleNamespace(**{k: getattr(llama_cpp, k) for k in dir(llama_cpp)
                                        if not k.startswith("__")})
    del stand_in.llama_memory_clear

    class OldParams(ctypes.Structure):  # a quantizer struct from before dry runs existed
        _fields_ = [(f, ctypes.c_int) for f in
                    compat.STRUCT_FIELDS["llama_model_quantize_params"] if f != "dry_run"]

    stand_in.llama_model_quantize_params = OldParams
    stand_in.__version__ = "0.2.90"
    found = compat.problems(stand_in)
    assert found[0].startswith("llama-cpp-python 0.2.90 is installed; QuantDesk is tested "
                               f"with {compat.TESTED_VERSION}")
    assert "llama.cpp functions missing: llama_memory_clear" in found
    assert "llama_model_quantize_params lacks dry_run" in found


def test_a_ggml_tensor_copy_with_a_field_out_of_place_is_caught() -> None:
    assert compat.tensor_layout_problem(GgmlTensor) is None

    class Shifted(ctypes.Structure):  # 'buffer' forgotten: every later field reads wrong
        pass

    Shifted._fields_ = [f for f in GgmlTensor._fields_ if f[0] != "buffer"]
    problem = compat.tensor_layout_problem(Shifted)
    assert problem is not None and "laid out differently" in problem and "ne" in problem


def test_the_hardware_advice_says_what_differs() -> None:
    from dataclasses import replace

    from app.core.hardware import advice
    from app.engine.probe import full_profile

    profile = full_profile()
    assert profile.llama is not None and profile.llama.problems == ()
    broken = replace(profile, llama=replace(profile.llama, problems=("the struct x is missing",)))
    assert any("differs from the one QuantDesk is tested with" in line
               and "the struct x is missing" in line for line in advice(broken))


CXX_SOURCE = """
#include <sstream>
#include <stdexcept>
extern "C" int digits(long x) {
    std::ostringstream s;
    s << x;
    if (x < 0) throw std::logic_error("negative");
    return static_cast<int>(s.str().size());
}
"""


def _cxx_library(folder: Path, name: str, *flags: str) -> tuple[Path, ctypes.CDLL]:
    """A C++ shared library built with the machine's g++ (llama-cpp-python's build needs it),
    loaded into this process."""
    source = folder / "digits.cpp"
    source.write_text(CXX_SOURCE)
    out = folder / name
    subprocess.run(["g++", "-fPIC", "-shared", *flags, str(source), "-o", str(out)], check=True)
    return out, ctypes.CDLL(str(out))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libstdc++ is Linux's")
def test_a_library_with_its_own_copy_of_the_cxx_runtime_is_named(tmp_path: Path) -> None:
    shared, shared_lib = _cxx_library(tmp_path, "libshared.so")
    static, _ = _cxx_library(tmp_path, "libggml-cuda.so.0", "-static-libstdc++")
    assert shared_lib.digits(12345) == 5
    # (whether the static copy's std::ostringstream works depends on what this process loaded
    # before it: in the test suite's process it gave an empty string, the mix the check names)
    never_loaded = tmp_path / "libmtmd.so.0"
    never_loaded.write_bytes(static.read_bytes())
    assert compat.own_cxx_runtime([shared, static, never_loaded]) == ["libggml-cuda.so.0"]

    # as the problem list says it, for a llama.cpp whose libraries sit in that folder
    library = types.SimpleNamespace(_name=str(tmp_path / "libllama.so"))
    stand_in = types.SimpleNamespace(llama_cpp=types.SimpleNamespace(_lib=library))
    problem = compat.cxx_runtime_problem(stand_in)
    assert problem is not None
    assert "libggml-cuda.so.0" in problem and "libshared.so" not in problem
    assert "links libstdc++ as a shared library" in problem
    # the installed build is not one of them (its libraries need libstdc++.so.6)
    assert compat.cxx_runtime_problem(llama_cpp) is None
