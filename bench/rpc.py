"""A model split over llama.cpp's RPC backend on loopback against the same model loaded locally:
prompt and generation tokens/s, load time, and the bytes that cross the network per token.

Two RPC server children on 127.0.0.1 lend CPU memory; the split load keeps a third of the
layers on this CPU and gives a third to each server (llama.cpp's split by free memory; both
servers report the same). Same model, threads and context on both sides.

- prompt / generation tok/s: llama-bench's pp512 and tg128 (``evaluate.measure_speed``: a
  512-token batch, then 128 tokens one at a time; median of the repetitions);
- load: the engine child's load (``Loaded.load_seconds``), median;
- bytes per generated token: the TCP bytes of the engine's connections to the servers (the
  kernel's own counters, ``ss -ti``), over 128 more generated tokens of one reply (the reply
  of 144 tokens minus that of 16, the same prompt, so the prompt's transfer cancels out).

On one machine the servers share the cores with the engine, so the split's speed says what
the protocol costs (a round trip per layer group and token), not what more machines give.

    .venv/bin/python -m bench.rpc [--model PATH] [--threads 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
from pathlib import Path

from app.core.embedded import embedded_model_path
from app.core.gguf_info import read_model_info
from app.core.sampling import Sampling
from app.engine import rpc
from app.engine.evaluate import measure_speed
from app.engine.host import ModelHost
from app.engine.protocol import LoadSettings, ReplyDone

PROMPT = "<|im_start|>user\nTell me about the sea.<|im_end|>\n<|im_start|>assistant\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_bytes(ports: list[int]) -> int | None:
    """Bytes sent both ways on the established connections to ``ports`` (client side)."""
    if shutil.which("ss") is None:
        return None
    filter_ = " or ".join(f"dport = :{p}" for p in ports)
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( {filter_} )"],
                         capture_output=True, text=True, check=False).stdout
    sent = sum(int(v) for v in re.findall(r"bytes_sent:(\d+)", out))
    received = sum(int(v) for v in re.findall(r"bytes_received:(\d+)", out))
    return sent + received


def load_and_traffic(model: Path, threads: int, n_gpu: int, servers: tuple[str, ...],
                     ports: list[int], reps: int) -> tuple[float, float | None]:
    """Median load seconds, and bytes per generated token (None without servers)."""
    loads, per_token = [], None
    for _ in range(reps):
        host = ModelHost()
        try:
            loaded = host.load_sync(LoadSettings(str(model), n_ctx=1024, n_threads=threads,
                                                 n_gpu_layers=n_gpu, rpc_servers=servers))
            loads.append(loaded.load_seconds)
            if servers and per_token is None:
                moved = []
                for n in (16, 144):
                    before = tcp_bytes(ports)
                    events = list(host.chat_stream((), Sampling(
                        temperature=0.0, max_tokens=n, ignore_eos=True), prompt=PROMPT))
                    after = tcp_bytes(ports)
                    assert isinstance(events[-1], ReplyDone)
                    if before is not None and after is not None:
                        moved.append(after - before)
                if len(moved) == 2:
                    per_token = (moved[1] - moved[0]) / 128
        finally:
            host.shutdown()
    return statistics.median(loads), per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    model: Path = args.model
    n_layer = read_model_info(model).n_layers
    n_gpu = (n_layer + 1) * 2 // 3  # a third of the blocks stay on this CPU
    ports = [free_port(), free_port()]
    servers = [rpc.RpcServer(port=p, devices=("CPU",), threads=args.threads).start()
               for p in ports]
    endpoints = tuple(s.endpoint for s in servers)
    rows = []
    try:
        for name, layers, used in (("local (this CPU)", 0, ()),
                                   ("split: CPU + 2 RPC servers", n_gpu, endpoints)):
            speed = measure_speed(model, args.reps, args.threads, n_gpu_layers=layers,
                                  rpc_servers=used)
            load, per_token = load_and_traffic(model, args.threads, layers, used, ports,
                                               args.reps)
            rows.append((name, speed.pp_tokens_per_s, speed.tg_tokens_per_s, load, per_token))
    finally:
        for server in servers:
            server.stop()
    print(f"model: {model.name}, {n_layer} blocks; threads {args.threads} (engine and each "
          f"server); split: {n_gpu} of {n_layer + 1} layers over 2 servers on 127.0.0.1; "
          f"median of {args.reps}")
    print(f"{'load':<28} {'pp512 tok/s':>12} {'tg128 tok/s':>12} {'load s':>8} "
          f"{'bytes/gen token':>16}")
    for name, pp, tg, load, per_token in rows:
        moved = f"{per_token:,.0f}" if per_token is not None else "—"
        print(f"{name:<28} {pp:>12.1f} {tg:>12.1f} {load:>8.2f} {moved:>16}")
    local, split = rows
    print(f"split / local: prompt {split[1] / local[1]:.2f}x, generation "
          f"{split[2] / local[2]:.2f}x, load {split[3] / local[3]:.2f}x")


if __name__ == "__main__":
    main()
