"""Make quantized variants of a GGUF with llama.cpp's quantizer, for tests and benchmarks.

Run it through ``app.engine.child.call_in_child``: llama.cpp's quantizer logs and allocates in
the calling process.
"""

from __future__ import annotations

import ctypes


def quantize(src: str, dst: str, ftype: int, allow_requantize: bool = False) -> int:
    """``llama_model_quantize`` with default parameters; returns llama.cpp's status (0 = ok)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
