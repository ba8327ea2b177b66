"""Other machines for the UI (llama.cpp's RPC backend): read the servers' devices, and share this
machine through a server child (``app.engine.rpc``). Callers run the slow parts in a ``Task``."""

from __future__ import annotations

from app.engine.rpc import (
    DEFAULT_PORT,
    LOCAL_HOST,
    SECURITY_WARNING,
    RpcError,
    RpcServer,
    is_loopback,
    normalize,
    remote_servers,
)

__all__ = ["DEFAULT_PORT", "LOCAL_HOST", "SECURITY_WARNING", "RpcError", "RpcServer",
           "is_loopback", "normalize", "remote_servers"]
