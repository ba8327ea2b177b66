"""A model's fit read from its header on the hub: the real huggingface-hub client against the
local hub server, checked against the same model read from disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import memory
from app.core.gguf_info import read_model_info
from app.core.hardware import GIB, BackendDevice, CpuInfo, HardwareProfile, LlamaBuild
from app.core.units import format_bytes
from app.hub import remote_header
from app.hub.errors import HubError, HubNotFound, RefusedName
from app.hub.remote_fit import hf_reference, remote_fit
from app.hub.remote_header import HeaderUnavailable, read_remote_model
from tests.helpers.fake_hub import FakeHub
from tests.helpers.header_models import write_header_model
from tests.helpers.split_model import split_model_parts

REPO = "org/Big-GGUF"
NAME = "Big-Q8_0.gguf"


def _profile(ram: int = 32 * GIB, gpu: int | None = None) -> HardwareProfile:
    devices = [BackendDevice("CPU", "cpu", "cpu", "CPU", ram, ram)]
    if gpu is not None:
        devices.insert(0, BackendDevice("CUDA0", "NVIDIA GeForce RTX 4090", "gpu", "CUDA", gpu,
                                        gpu))
    return HardwareProfile(os="Linux", os_version="6",
                           cpu=CpuInfo("cpu", "x86_64", 8, 16, ("AVX2",)), ram_total=ram,
                           ram_available=ram,
                           llama=LlamaBuild("0.3", ("CPU",), tuple(devices), "", gpu is not None))


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~100 MB model with a 32k-token vocabulary (a 1.4 MB header)."""
    return write_header_model(tmp_path_factory.mktemp("big") / NAME,
                              weight_bytes=84 * 2**20)


@pytest.fixture
def hub(big_model: Path) -> Iterator[FakeHub]:
    remote_header.forget_cache()
    h = FakeHub()
    h.add(REPO, NAME, big_model.read_bytes())
    h.start()
    yield h
    h.stop()
    remote_header.forget_cache()


def test_estimate_from_the_hub_reads_little_and_matches_the_local_file(
        hub: FakeHub, big_model: Path) -> None:
    size = big_model.stat().st_size
    assert size > 100 * 10**6
    profile = _profile(gpu=8 * GIB)
    fit = remote_fit(REPO, [NAME], profile, n_ctx=8192, endpoint=hub.endpoint)
    assert fit.header is not None and fit.plan is not None and fit.problem is None
    served = sum(r.sent for r in hub.gets(REPO, NAME))
    assert fit.header.bytes_read == served < 0.05 * size
    local = memory.plan(read_model_info(big_model), profile, n_ctx=8192)
    assert fit.plan.estimate == local.estimate
    assert (fit.plan.fit, fit.plan.n_gpu_layers, fit.plan.max_ctx) == \
        (local.fit, local.n_gpu_layers, local.max_ctx)
    assert fit.sentence() == local.sentence()
    assert fit.sentence().startswith(f"needs {format_bytes(local.estimate.total)} at 8K context")


def test_a_header_larger_than_the_first_range_is_read_in_pieces(
        hub: FakeHub, big_model: Path) -> None:
    header_end = min(t.offset for t in read_model_info(big_model).tensors)
    got = read_remote_model(REPO, [NAME], endpoint=hub.endpoint, first_range=4096)
    local = read_model_info(big_model)
    assert [(t.name, t.type_name, t.shape, t.n_bytes, t.offset) for t in got.info.tensors] == \
        [(t.name, t.type_name, t.shape, t.n_bytes, t.offset) for t in local.tensors]
    gets = hub.gets(REPO, NAME)
    assert len(gets) == got.requests > 2
    # each request asks only for bytes not fetched yet, and together they cover the header
    ends = [r.start + r.sent for r in gets]
    assert [r.start for r in gets] == [0, *ends[:-1]]
    assert header_end <= ends[-1] < 2 * header_end
    assert str(got.info.path) == str(Path(REPO) / NAME)  # where it would be downloaded


def test_a_server_without_range_support_falls_back_to_the_size_rule_and_says_why(
        hub: FakeHub, big_model: Path) -> None:
    hub.ranges = False
    fit = remote_fit(REPO, [NAME], _profile(), endpoint=hub.endpoint)
    assert fit.plan is None and fit.header is None
    assert fit.badge == "~Fits in RAM"
    assert fit.problem is not None and "does not answer Range requests" in fit.problem
    assert "by file size" in fit.sentence() and "Range" in fit.sentence()
    assert fit.size == big_model.stat().st_size


def test_headers_are_cached_by_repo_commit_and_file(hub: FakeHub) -> None:
    first = read_remote_model(REPO, [NAME], endpoint=hub.endpoint)
    fetched = len(hub.gets(REPO, NAME))
    again = read_remote_model(REPO, [NAME], endpoint=hub.endpoint)
    remote_header.forget_cache()  # a new process: the cache folder still has it
    later = read_remote_model(REPO, [NAME], endpoint=hub.endpoint)
    assert not first.cached and again.cached and later.cached
    assert again.bytes_read == later.bytes_read == 0
    assert len(hub.gets(REPO, NAME)) == fetched
    assert later.info == first.info


def test_a_split_model_is_read_from_all_its_parts(hub: FakeHub, tmp_path: Path) -> None:
    parts = split_model_parts("Split-Q4_K_M", 3, 2 * 2**20)
    for name, data in parts.items():
        hub.add("org/Split-GGUF", name, data)
        (tmp_path / name).write_bytes(data)
    names = sorted(parts)
    got = read_remote_model("org/Split-GGUF", names, endpoint=hub.endpoint)
    local = read_model_info(tmp_path / names[0])
    assert got.info.split_count == 3 and got.size == sum(len(d) for d in parts.values())
    assert [(t.name, t.n_bytes, t.offset) for t in got.info.tensors] == \
        [(t.name, t.n_bytes, t.offset) for t in local.tensors]
    assert got.info.n_params == local.n_params


def test_the_token_is_sent_and_a_refusal_falls_back_only_with_a_size(
        hub: FakeHub, big_model: Path) -> None:
    hub.private.add(REPO)
    fit = remote_fit(REPO, [NAME], _profile(), endpoint=hub.endpoint, token="good-token")
    assert fit.plan is not None
    assert all(r.authorization == "Bearer good-token" for r in hub.gets(REPO, NAME))
    remote_header.forget_cache()
    with pytest.raises(HubNotFound, match="private"):  # how the hub answers a bad token
        remote_fit(REPO, [NAME], _profile(), endpoint=hub.endpoint, token="bad-token")
    guess = remote_fit(REPO, [NAME], _profile(), endpoint=hub.endpoint, token="bad-token",
                       size=big_model.stat().st_size)
    assert guess.plan is None and guess.problem is not None and "token" in guess.problem


def test_a_damaged_header_is_named_and_the_size_rule_answers(hub: FakeHub,
                                                             big_model: Path) -> None:
    data = bytearray(big_model.read_bytes()[:300_000])
    data[4] = 9  # GGUF version 9
    hub.add(REPO, "Damaged-Q4_0.gguf", bytes(data))
    with pytest.raises(HeaderUnavailable, match="version 9"):
        read_remote_model(REPO, ["Damaged-Q4_0.gguf"], endpoint=hub.endpoint)
    fit = remote_fit(REPO, ["Damaged-Q4_0.gguf"], _profile(), endpoint=hub.endpoint)
    assert fit.plan is None and "version 9" in (fit.problem or "")


def test_a_hostile_name_is_refused_before_any_request(hub: FakeHub) -> None:
    before = len(hub.requests)
    with pytest.raises(RefusedName):
        remote_fit(REPO, ["../../escape.gguf"], _profile(), endpoint=hub.endpoint, size=10)
    assert len(hub.requests) == before


def test_replanning_at_another_context_needs_no_request(hub: FakeHub, big_model: Path) -> None:
    profile = _profile()
    fit = remote_fit(REPO, [NAME], profile, n_ctx=2048, endpoint=hub.endpoint)
    before = len(hub.requests)
    longer = fit.replan(profile, 65536, up_to_trained=True)
    assert len(hub.requests) == before
    assert longer.plan is not None and longer.plan.n_ctx == 8192  # the model's trained context
    assert longer.plan.estimate == memory.plan(read_model_info(big_model), profile,
                                               n_ctx=8192).estimate


def test_hf_references_name_a_repo_and_every_part() -> None:
    assert hf_reference("hf:org/Repo-GGUF/Model-Q4_K_M.gguf") == \
        ("org/Repo-GGUF", ("Model-Q4_K_M.gguf",))
    assert hf_reference("hf:org/Repo-GGUF/Q8_0/M-Q8_0-00002-of-00002.gguf") == \
        ("org/Repo-GGUF", ("Q8_0/M-Q8_0-00001-of-00002.gguf", "Q8_0/M-Q8_0-00002-of-00002.gguf"))
    for bad in ("hf:org/Model-Q4_K_M.gguf", "hf:org//x.gguf", "hf:org/repo/README.md"):
        with pytest.raises(HubError, match=r"hf:ORG/REPO/FILE\.gguf"):
            hf_reference(bad)
