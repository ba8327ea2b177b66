"""The start-up check of what the engine relies on in llama-cpp-python."""

from __future__ import annotations

import ctypes
import types

import llama_cpp

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
