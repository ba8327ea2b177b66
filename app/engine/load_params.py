"""The model parameters every engine load starts from: llama.cpp's defaults, made safe here.

Every place that loads a model for computing (the chat host, the evaluation and imatrix runner)
takes its ``llama_model_params`` from ``model_params()``, so a work-around for a llama.cpp
build problem is applied once, to every load.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache
from typing import Any

from app.core.hardware import extra_buffers_safe

log = logging.getLogger(__name__)


@cache
def extra_buffers() -> bool:
    """Whether this llama.cpp build can use its extra CPU buffer types (weight repacking).

    Builds with AMX crash in their AMX matrix kernels (``app.core.hardware``
    ``extra_buffers_safe``); with them the engine loads without extra buffer types, which costs
    the repacked-weight speed-up on those CPUs but keeps every model working.
    """
    import llama_cpp

    info = (llama_cpp.llama_print_system_info() or b"").decode("utf-8", "replace")
    safe = extra_buffers_safe(info)
    if not safe:  # said once to the user by the hardware advice (app.core.hardware)
        log.info("this llama.cpp build has AMX kernels, which crash on quantized models "
                    "(llama.cpp issue 20824): loading without extra buffer types (no weight "
                    "repacking)")
    return safe


def apply(params: Any) -> Any:
    """Make llama.cpp's default ``llama_model_params`` safe for this build; returns them."""
    if not extra_buffers():
        params.use_extra_bufts = False
    return params


def model_params(rpc_servers: tuple[str, ...] = ()) -> Any:
    """llama.cpp's default model parameters with ``apply`` done.

    ``rpc_servers``: llama.cpp RPC servers ("host:port") whose devices the load places layers
    on, before this machine's GPUs (``app.engine.rpc.load_devices``); each is asked first, so
    one that cannot be used raises ``RpcError`` (a ``GenerationError``) before anything loads.
    """
    import llama_cpp

    params = apply(llama_cpp.llama_model_default_params())
    from app.engine import rpc  # not at the top: rpc imports generation, which imports this

    devices = rpc.load_devices(rpc_servers)
    if devices is not None:
        params.devices = ctypes.addressof(devices)  # a NULL-terminated ggml_backend_dev_t[]
    return params
