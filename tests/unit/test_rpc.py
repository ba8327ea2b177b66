"""Loading across machines with llama.cpp's RPC backend: two real RPC server children on
127.0.0.1 lend CPU memory; models split over the local CPU and both servers generate exactly
what a local-only load does; a server lost mid-reply or down at load gives words naming it."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.core import memory
from app.core.gguf_info import read_model_info
from app.core.hardware import RemoteDevice, RemoteServer
from app.core.sampling import Sampling
from app.engine import rpc
from app.engine.host import EngineCrashed, EngineError, ModelHost
from app.engine.protocol import LoadSettings, ReplyDone, Token

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=64)
SEA = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
MIB = 1024**2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[rpc.RpcServer, rpc.RpcServer]]:
    pair = (rpc.RpcServer(port=free_port(), devices=("CPU",), threads=1).start(),
            rpc.RpcServer(port=free_port(), devices=("CPU",), threads=1).start())
    yield pair
    for server in pair:
        server.stop()


def endpoints(pair: tuple[rpc.RpcServer, ...]) -> tuple[str, ...]:
    return tuple(s.endpoint for s in pair)


def greedy(model: Path, n_gpu_layers: int, servers: tuple[str, ...], prompt: str,
           n_ctx: int = 512) -> tuple[str, tuple[str, ...]]:
    """64 greedy tokens of ``prompt``, and llama.cpp's log lines of the load."""
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(model), n_ctx=n_ctx, n_threads=1, flash_attn="on",
                                    n_gpu_layers=n_gpu_layers, rpc_servers=servers))
        events = list(host.chat_stream((), GREEDY, prompt=prompt))
        done = events[-1]
        assert isinstance(done, ReplyDone) and done.metrics.generated_tokens == 64
        assert "".join(e.text for e in events if isinstance(e, Token)) == done.text
        return done.text, tuple(host.log_tail)
    finally:
        host.shutdown()


def buffers_on(log_tail: tuple[str, ...], endpoint: str) -> bool:
    return any("model buffer size" in ln and f"[{endpoint}]" in ln for ln in log_tail)


# --- endpoints and servers ---------------------------------------------------------------------


def test_endpoints_are_parsed_and_checked() -> None:
    assert rpc.parse_endpoint(" 192.168.1.5:50052 ") == ("192.168.1.5", 50052)
    assert rpc.parse_endpoint("[::1]:7000") == ("::1", 7000)
    assert rpc.normalize("box.lan:1") == "box.lan:1"
    for bad in ("host", "host:", ":50052", "host:0", "host:70000", "host:port"):
        with pytest.raises(ValueError, match=r"host:port|port must"):
            rpc.parse_endpoint(bad)
    assert rpc.is_loopback("127.0.0.1") and rpc.is_loopback("localhost")
    assert not rpc.is_loopback("0.0.0.0") and not rpc.is_loopback("192.168.1.5")


def test_servers_answer_and_list_their_memory(servers: tuple[rpc.RpcServer, ...]) -> None:
    for server in servers:
        assert rpc.hello(server.endpoint) == (rpc.PROTO_MAJOR, 0, 0)
        assert server.alive and psutil.Process(server.pid).status() != "zombie"
    down = f"127.0.0.1:{free_port()}"
    found = rpc.remote_servers([*endpoints(servers), down, "nonsense"])
    for server, listed in zip(servers, found, strict=False):
        assert listed.endpoint == server.endpoint and listed.usable
        (device,) = listed.devices
        # a CPU server reports this machine's memory, as llama.cpp's CPU device does
        assert 0 < device.memory_free <= device.memory_total
        assert abs(device.memory_total - psutil.virtual_memory().total) < 64 * MIB
    assert not found[2].usable and down in (found[2].problem or "")
    assert "refused" in (found[2].problem or "")
    assert "host:port" in (found[3].problem or "")


def test_a_second_server_on_a_taken_port_says_so(servers: tuple[rpc.RpcServer, ...]) -> None:
    with pytest.raises(rpc.RpcError, match=f"Cannot listen on 127.0.0.1:{servers[0].port}"):
        rpc.RpcServer(port=servers[0].port, devices=("CPU",)).start()
    with pytest.raises(rpc.RpcError, match="No device named 'GPU9'"):
        rpc.RpcServer(port=free_port(), devices=("GPU9",)).start()


# --- loads across machines ---------------------------------------------------------------------


def test_tiny_model_across_cpu_and_two_servers_generates_as_locally(
        tiny_model: Path, servers: tuple[rpc.RpcServer, ...]) -> None:
    local, _ = greedy(tiny_model, 0, (), "Once upon a time")
    # 2 blocks + the output layer: 2 offloaded puts block 0 on this CPU, block 1 on the first
    # server and the output layer on the second (equal free memory: half of the share each)
    split, log_tail = greedy(tiny_model, 2, endpoints(servers), "Once upon a time")
    assert split == local
    assert all(buffers_on(log_tail, e) for e in endpoints(servers))
    assert any("CPU" in ln and "model buffer size" in ln for ln in log_tail)


def test_smollm2_across_cpu_and_two_servers_generates_as_locally(
        smollm2: Path, servers: tuple[rpc.RpcServer, ...]) -> None:
    info = read_model_info(smollm2)
    n_gpu = 20  # of 30 blocks + output: 10 blocks stay on this CPU
    rss_before = [psutil.Process(s.pid).memory_info().rss for s in servers]
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(smollm2), n_ctx=512, n_threads=1, flash_attn="on",
                                    n_gpu_layers=n_gpu, rpc_servers=endpoints(servers)))
        events = list(host.chat_stream((), GREEDY, prompt=SEA))
        rss_after = [psutil.Process(s.pid).memory_info().rss for s in servers]
        log_tail = tuple(host.log_tail)
    finally:
        host.shutdown()
    split = events[-1]
    assert isinstance(split, ReplyDone) and split.metrics.generated_tokens == 64
    local, _ = greedy(smollm2, 0, (), SEA)
    assert split.text == local
    assert all(buffers_on(log_tail, e) for e in endpoints(servers))
    # The plan's share of each server against what that server's process took (its RSS):
    # weights and KV cache are written whole; the compute reservation is touched in part.
    frees = [psutil.virtual_memory().available] * 2
    devices = [memory.OffloadDevice(e, f, memory.usable_memory(f), e)
               for e, f in zip(endpoints(servers), frees, strict=True)]
    est = memory.estimate(info, 512, n_gpu, devices=devices)
    assert len(est.devices) == 2
    for use, before, after in zip(est.devices, rss_before, rss_after, strict=True):
        grown = after - before
        assert use.weights + use.kv_cache <= grown + 4 * MIB
        assert grown <= use.total + 16 * MIB


def test_server_lost_mid_reply_names_it_and_a_reload_without_it_works(
        smollm2: Path, servers: tuple[rpc.RpcServer, ...]) -> None:
    doomed = rpc.RpcServer(port=free_port(), devices=("CPU",), threads=1).start()
    used = (servers[0].endpoint, doomed.endpoint)
    host = ModelHost()
    try:
        host.load_sync(LoadSettings(str(smollm2), n_ctx=512, n_threads=1, n_gpu_layers=31,
                                    rpc_servers=used))
        tokens = 0
        with pytest.raises(EngineCrashed) as crash:
            for event in host.chat_stream((), Sampling(temperature=0.0, max_tokens=400),
                                          prompt=SEA):
                tokens += isinstance(event, Token)
                if tokens == 5:
                    doomed.stop()
        assert 5 <= tokens < 400
        # the child said which server went away just before llama.cpp aborted it…
        assert any(f"{doomed.endpoint} (connection refused" in ln
                   for ln in crash.value.log_tail)
        # …and so does the hint the host adds to its message
        hint = rpc.crash_hint(used)
        assert doomed.endpoint in hint and servers[0].endpoint not in hint
        assert rpc.crash_hint((servers[0].endpoint,)) == ""
        reloaded = host.load_sync(LoadSettings(str(smollm2), n_ctx=512, n_threads=1,
                                               n_gpu_layers=31,
                                               rpc_servers=(servers[0].endpoint,)))
        assert reloaded.path == str(smollm2)
        events = list(host.chat_stream((), Sampling(temperature=0.0, max_tokens=8),
                                       prompt=SEA))
        assert isinstance(events[-1], ReplyDone) and events[-1].metrics.generated_tokens == 8
    finally:
        host.shutdown()
        doomed.stop()


def test_endpoint_down_at_load_fails_clearly_before_any_layer_is_placed(
        tiny_model: Path, servers: tuple[rpc.RpcServer, ...]) -> None:
    down = f"127.0.0.1:{free_port()}"
    host = ModelHost()
    try:
        start = time.monotonic()
        with pytest.raises(EngineError) as failed:
            host.load_sync(LoadSettings(str(tiny_model), n_ctx=256, n_gpu_layers=-1,
                                        rpc_servers=(servers[0].endpoint, down)))
        assert time.monotonic() - start < 20
        message = str(failed.value)
        assert f"The RPC server at {down} cannot be reached" in message
        assert "connection refused" in message
        assert not isinstance(failed.value, EngineCrashed)  # refused, not aborted
        assert not any("load_tensors" in ln or "model buffer" in ln
                       for ln in failed.value.log_tail)
    finally:
        host.shutdown()


# --- the plan across machines ------------------------------------------------------------------


def test_split_follows_llama_cpps_rule() -> None:
    # upper_bound of (i - first) / n_gpu in the cumulative shares, as load_tensors does
    assert memory.split_layers(2, 2, [10, 10]) == [[1], [2]]
    assert memory.split_layers(30, 31, [1, 1, 2]) == [
        list(range(0, 8)), list(range(8, 16)), list(range(16, 31))]
    assert memory.split_layers(4, 0, [5]) == [[]]
    assert memory.split_layers(4, 3, [0, 7]) == [[], [2, 3, 4]]


def test_plan_places_layers_across_machines_in_words(smollm2: Path) -> None:
    from app.core import hardware

    info = read_model_info(smollm2)
    base = hardware.probe()
    gib = 1024**3
    remote = (RemoteServer("10.0.0.2:50052", (RemoteDevice("10.0.0.2:50052", 0, "RPC0",
                                                           gib // 10, 8 * gib),)),
              RemoteServer("10.0.0.3:50052", (RemoteDevice("10.0.0.3:50052", 0, "RPC1",
                                                           4 * gib, 8 * gib),)),
              RemoteServer("10.0.0.4:50052", problem="cannot be reached"))
    from dataclasses import replace

    profile = replace(base, remote=remote, llama=None)
    fit = memory.plan(info, profile, n_ctx=2048)
    # 0.1 GiB free leaves the first server nothing usable after the margins: it is left out
    # (llama.cpp would give it the first offloaded layer whatever its size)
    assert fit.rpc_servers == ("10.0.0.3:50052",)
    assert fit.n_gpu_layers == info.n_layers + 1 and fit.fit == "gpu"
    text = "\n".join(fit.explanation)
    assert "RPC1 at 10.0.0.3:50052: layers 0–29 and the output layer" in text
    assert "RPC0 at 10.0.0.2:50052 is left out" in text and "network" in text
    assert "other machine" in fit.sentence()
    # two servers with room: the layers are split by free memory, each within its margin
    roomy = replace(profile, remote=(
        RemoteServer("10.0.0.2:50052", (RemoteDevice("10.0.0.2:50052", 0, "RPC0",
                                                     gib // 2, gib),)),
        remote[1]))
    fit = memory.plan(info, roomy, n_ctx=2048)
    assert fit.rpc_servers == ("10.0.0.2:50052", "10.0.0.3:50052")
    assert len(fit.estimate.devices) == 2
    for use, device in zip(fit.estimate.devices, memory.offload_devices(roomy), strict=True):
        assert 0 < use.total <= device.usable
    pair = memory.plan_pair(info, info, profile, 2048)
    assert not pair.together and "one client at a time" in pair.explanation


def test_pipeline_evaluation_uses_the_servers_in_the_settings(
        tiny_model: Path, servers: tuple[rpc.RpcServer, ...]) -> None:
    from app.core import settings as settings_store
    from app.core.resources import evaluation_text
    from app.engine.evaluate import reference_cache_dir, reference_pass
    from app.pipeline.placement import placement

    # without other machines in the settings, steps run on this machine as before
    assert placement(tiny_model, 512) == (0, ())
    stored = settings_store.load()
    stored.rpc_servers = list(endpoints(servers))
    settings_store.save(stored)
    try:
        layers, used = placement(tiny_model, 512)
    finally:  # later tests' steps run on this machine again
        stored.rpc_servers = []
        settings_store.save(stored)
    assert layers > 0 and set(used) == set(endpoints(servers))

    def ppl(n_gpu_layers: int, rpc_servers: tuple[str, ...]) -> float:
        text = evaluation_text()
        shutil.rmtree(reference_cache_dir(tiny_model, text, 512, 2), ignore_errors=True)
        job = reference_pass(tiny_model, text, max_chunks=2, speed_reps=0,
                             n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers)
        while True:
            try:
                next(job)
            except StopIteration as done:
                result, cached = done.value
                assert not cached
                return float(result.quality.ppl)

    assert ppl(layers, used) == pytest.approx(ppl(0, ()), rel=1e-4)
