"""Where an evaluation or importance-matrix step puts a model's layers.

Without other machines in the settings, on this machine's CPU, as before (every candidate then
runs the same kernels, which keeps speed comparisons fair). With RPC servers listed on the
Hardware page, the memory plan (``app.core.memory.plan``) splits the layers over their devices
and this machine's GPUs as it does for the chat, so a model that does not fit here can still be
measured. The placement is decided when the step runs (the servers' free memory is read then)
and is not part of a step's fingerprint: the RPC backend computes with the same CPU kernels.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

log = logging.getLogger(__name__)


def placement(model: Path, n_ctx: int) -> tuple[int, tuple[str, ...]]:
    """(GPU layers, RPC servers) for loading ``model`` at ``n_ctx`` in a pipeline step."""
    from app.core import settings
    from app.core.gguf_info import read_model_info
    from app.core.memory import plan
    from app.engine import rpc
    from app.engine.probe import full_profile

    endpoints = settings.load().rpc_servers
    if not endpoints:
        return 0, ()
    profile = replace(full_profile(), remote=rpc.remote_servers(endpoints))
    fit = plan(read_model_info(model), profile, n_ctx)
    log.info("%s at %d tokens: %s", model.name, n_ctx, fit.sentence())
    return (fit.n_gpu_layers, fit.rpc_servers) if fit.rpc_servers else (0, ())
