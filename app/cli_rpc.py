"""`quantdesk rpc-serve`: lend this machine's devices to another QuantDesk (or llama.cpp) over
llama.cpp's RPC protocol, and what `quantdesk hw` says about RPC.

The server is ggml's own (``ggml_backend_rpc_start_server`` in the llama.cpp QuantDesk loads),
run in a child process so that Ctrl-C here ends it (a thread blocked in C cannot be interrupted).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from typing import Any

from app.core.hardware import HardwareProfile
from app.core.units import format_bytes


def add_parser(sub: Any) -> None:
    """Add `rpc-serve` to the CLI's subcommands."""
    from app.engine.rpc import DEFAULT_PORT, LOCAL_HOST

    serve = sub.add_parser(
        "rpc-serve",
        help="share this machine's devices with other machines (llama.cpp's RPC server)",
        description="Start llama.cpp's RPC server so that a QuantDesk on another machine can "
                    "place model layers here. It has no authentication and no encryption: "
                    "use it on a trusted network only.")
    serve.add_argument("--host", default=LOCAL_HOST,
                       help=f"address to listen on (default {LOCAL_HOST}: this machine only; "
                            "a network address lets others connect)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"port to listen on (default {DEFAULT_PORT})")
    serve.add_argument("--device", action="append", default=[], metavar="NAME",
                       help="a device to offer, as llama.cpp names it (CPU, CUDA0…); repeat or "
                            "separate with commas; default: the GPUs, or the CPU without one")
    serve.add_argument("--threads", type=int, default=None,
                       help="CPU threads for a CPU device (default: all cores)")
    serve.set_defaults(func=cmd_rpc_serve)


def cmd_rpc_serve(args: argparse.Namespace) -> int:
    """Run the RPC server until Ctrl-C."""
    from app.engine import rpc

    devices = tuple(d.strip() for value in args.device for d in value.split(",") if d.strip())
    server = rpc.RpcServer(args.host, args.port, devices, args.threads, quiet=False)
    if not rpc.is_loopback(args.host):
        print(f"WARNING: listening on {args.host}. {rpc.SECURITY_WARNING}", file=sys.stderr)
    try:
        server.start(with_parent=True)
    except rpc.RpcError as exc:
        print(f"quantdesk rpc-serve: {exc}", file=sys.stderr)
        return 1
    offered = ", ".join(devices) if devices else "the default devices (GPUs, else the CPU)"
    print(f"Sharing {offered} at {args.host}:{args.port}. Add that address (this machine's "
          "network address when listening on all) to the other machine's list. Ctrl-C stops.",
          flush=True)
    # a service manager's SIGTERM ends the server as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while server.alive:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def with_remote(profile: HardwareProfile, endpoints: list[str] | None = None) -> HardwareProfile:
    """``profile`` with the RPC servers from the settings (or ``endpoints``) read."""
    from app.core import settings
    from app.engine import rpc

    listed = settings.load().rpc_servers if endpoints is None else endpoints
    if not listed:
        return profile
    return replace(profile, remote=rpc.remote_servers(listed))


def hw_lines(profile: HardwareProfile) -> list[str]:
    """`quantdesk hw`'s lines about RPC: whether the build has it, and the other machines."""
    lines = []
    if profile.llama is not None:
        lines.append("RPC:       " + (
            "yes (share this machine with 'quantdesk rpc-serve'; use others by adding them in "
            "settings)" if profile.llama.has_rpc else
            "no: this llama-cpp-python was built without GGML_RPC=ON "
            "(packaging/llama-wheel.sh builds it with RPC)"))
    for server in profile.remote:
        if not server.usable:
            lines.append(f"  remote {server.endpoint}: {server.problem or 'no devices'}")
        for d in server.devices:
            lines.append(f"  remote {d.name} at {d.endpoint}: {format_bytes(d.memory_free)} "
                         f"free of {format_bytes(d.memory_total)}")
    return lines
