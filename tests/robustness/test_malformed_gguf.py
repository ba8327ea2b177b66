"""Malformed GGUF files: inspecting one gives a ModelInfo or a GGUFError, and nothing else.

Valid files (the tiny Llama, and a hand-made file with per-layer arrays, alignment 64 and
quantized tensors) are damaged on purpose by ``tests.helpers.gguf_mutations``: cut at every
region boundary, every metadata value replaced by a value of every other type, and random
mutations of each class (bit flips, absurd counts, lengths, shapes, offsets, types, alignment).
For every case ``read_model_info`` must return a ModelInfo that fits the file, or raise
GGUFError with a readable message naming the file, within a time and memory bound. A library
scan lists a broken file with its reason beside the good ones, and the real llama.cpp engine
refuses broken files (with the inspector's reason, before llama.cpp parses them) without taking
its parent down. ``bench/fuzz_gguf.py`` is the long run.
"""

from __future__ import annotations

import random
import shutil
import struct
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from app.core.gguf_info import GGUFError, ModelInfo, TensorInfo, read_model_info
from app.core.library import Library
from app.engine.host import EngineError, ModelHost
from app.engine.protocol import ChatMessage, LoadSettings, ReplyDone, Sampling, Token
from tests.helpers import gguf_mutations as gm
from tests.unit.test_gguf_info import _write_split

MAX_SECONDS = 2.0  # per case: a corrupt header must not make a library scan hang
MAX_ALLOCATED = 8 * 1024 * 1024  # per case; the files are ~100 kB, a corrupt count asks for TBs
# Reproducible in CI: a fixed seed per test and no example database. The autouse QUANTDESK_HOME
# fixture is function-scoped, which is harmless here: no case touches the data folder.
QUICK = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("malformed")


@pytest.fixture(scope="module")
def bases(folder: Path) -> dict[str, gm.Base]:
    return {base.name: base for base in gm.bases(folder)}


@pytest.fixture(scope="module")
def base_infos(bases: dict[str, gm.Base], folder: Path) -> dict[str, ModelInfo]:
    return {name: read_model_info(folder / f"base-{name}.gguf") for name in bases}


def inspect(case: gm.Case, path: Path) -> ModelInfo | GGUFError:
    """Write the case to ``path`` and inspect it, checking the property every case must meet;
    return what came back."""
    path.write_bytes(case.data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome: ModelInfo | GGUFError = read_model_info(path)
    except GGUFError as exc:
        outcome = exc
    except Exception as exc:  # the bug this suite exists for: say which case, keep the trace
        raise AssertionError(f"{case.kind} ({case.label}) raised {exc!r}") from exc
    finally:
        elapsed = time.perf_counter() - start
        allocated = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"{case.kind} ({case.label}) took {elapsed:.2f} s"
    assert allocated < MAX_ALLOCATED, f"{case.kind} ({case.label}) allocated {allocated:,} B"
    if isinstance(outcome, GGUFError):
        message = str(outcome)
        assert path.name in message, message
        assert message.isprintable() and len(message) < 600, message
    else:
        _assert_fits_the_file(outcome, len(case.data))
    return outcome


def _assert_fits_the_file(info: ModelInfo, size: int) -> None:
    """A ModelInfo that came back describes a file that can hold it."""
    assert info.file_size == size
    assert info.tensor_bytes <= size
    for t in info.tensors:
        assert t.offset >= 0 and t.offset + t.n_bytes <= size, t
    assert 0 <= info.n_layers <= 4096 and min(info.n_head, info.n_embd, info.n_vocab) >= 0
    assert 0 <= info.n_ctx_train < 2**32


# --- exhaustive classes --------------------------------------------------------------------------


def test_cut_at_every_region_boundary_is_refused_as_truncated(
        bases: dict[str, gm.Base], base_infos: dict[str, ModelInfo], folder: Path) -> None:
    for name, base in bases.items():
        needed = max(t.offset + t.n_bytes for t in base_infos[name].tensors)
        cases = list(gm.truncations(base))
        assert len(cases) > 100  # every boundary of the header, metadata, tensor table, data
        for case in cases:
            outcome = inspect(case, folder / "cut.gguf")
            if len(case.data) >= needed:  # only trailing padding was cut: nothing is missing
                assert isinstance(outcome, ModelInfo), case.label
                continue
            assert isinstance(outcome, GGUFError), f"{case.label} was accepted"
            assert "truncated" in str(outcome) or "only" in str(outcome), str(outcome)


# What read_model_info reads and the values it must accept, per key (the architecture's
# prefix left out): (lowest, highest, may hold one value per layer).
INTEGER_KEYS = {
    "block_count": (0, 4096, False),
    "context_length": (1, 2**32 - 1, False),
    "embedding_length": (1, 2**22, False),
    "feed_forward_length": (0, 2**22, True),
    "attention.head_count": (0, 2**22, True),
    "attention.head_count_kv": (0, 2**22, True),
    "attention.key_length": (1, 2**22, False),
    "attention.sliding_window": (0, 2**32 - 1, False),
    "general.file_type": (0, 2**32 - 1, False),
    "tokenizer.ggml.eos_token_id": (0, 2**32 - 1, False),
    "tokenizer.ggml.bos_token_id": (0, 2**32 - 1, False),
    "split.count": (0, 1, False),  # more parts need a file named '-00001-of-0000N'
}
STRING_KEYS = {"general.name", "tokenizer.chat_template"}
FLAG_TYPES = {gm.BOOL, gm.UINT8, gm.INT8, gm.UINT16, gm.INT16, gm.UINT32, gm.INT32, gm.UINT64,
              gm.INT64}
FIELDS = {"block_count": "n_layers", "context_length": "n_ctx_train",
          "embedding_length": "n_embd", "general.file_type": "file_type_id",
          "tokenizer.ggml.eos_token_id": "eos_token_id"}


def _must_accept(key: str, arch: str, new: gm.Replacement) -> bool | None:
    """Whether a file whose ``key`` holds ``new`` must be accepted (None: either outcome)."""
    if new.kind == "invalid":  # arrays of arrays or of unknown types: llama.cpp refuses them
        return False
    rule = key.removeprefix(f"{arch}.")
    if rule in INTEGER_KEYS:
        lo, hi, per_layer = INTEGER_KEYS[rule]
        if new.kind == "int":
            return isinstance(new.value, int) and lo <= new.value <= hi
        if new.kind == "int-array" and per_layer:
            items = new.value[1]  # type: ignore[index]
            return len(items) <= 4096 and all(0 <= v <= hi for v in items)
        return False
    if key in STRING_KEYS:
        return new.kind == "str"
    if key == "general.architecture":
        return new.kind == "str" and new.value != ""
    if key == "tokenizer.ggml.tokens":
        return new.kind == "str-array"
    if key == "general.alignment":  # a uint32 power of two may still misplace the data
        is_power_of_two = isinstance(new.value, int) and new.value > 0 and \
            new.value & (new.value - 1) == 0
        return None if new.vtype == gm.UINT32 and is_power_of_two else False
    if rule == "attention.sliding_window_pattern":  # a period, or one flag per layer
        if new.kind == "int":
            return isinstance(new.value, int) and 0 <= new.value <= 4096
        if new.kind in ("int-array", "other-array"):
            item_type, items = new.value  # type: ignore[misc]
            return item_type in FLAG_TYPES and len(items) <= 4096
        return False
    return True  # a value read_model_info does not use


def test_every_metadata_value_replaced_by_every_type(
        bases: dict[str, gm.Base], base_infos: dict[str, ModelInfo], folder: Path) -> None:
    checked = 0
    for name, base in bases.items():
        arch = base_infos[name].architecture
        for index, kv in enumerate(base.layout.kvs):
            for new in gm.REPLACEMENTS:
                case = gm.replace_with(base, index, new)
                outcome = inspect(case, folder / "replaced.gguf")
                expected = _must_accept(kv.key, arch, new)
                checked += 1
                if expected is None:
                    continue
                if not expected:
                    assert isinstance(outcome, GGUFError), f"{case.label} was accepted"
                    assert repr(kv.key) in str(outcome), str(outcome)
                    continue
                assert isinstance(outcome, ModelInfo), f"{case.label}: {outcome}"
                field = FIELDS.get(kv.key.removeprefix(f"{arch}."))
                if field and new.kind == "int" and new.value:
                    assert getattr(outcome, field) == new.value, case.label
    assert checked == len(gm.REPLACEMENTS) * sum(len(b.layout.kvs) for b in bases.values())


# --- random mutations of each class --------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(gm.MUTATIONS))
@QUICK
@given(rng=st.randoms(use_true_random=False), base_name=st.sampled_from(["llama", "varied"]))
def test_random_mutations_give_model_info_or_gguf_error(
        kind: str, rng: random.Random, base_name: str, bases: dict[str, gm.Base],
        folder: Path) -> None:
    case = gm.MUTATIONS[kind](rng, bases[base_name])
    note(f"{base_name}: {case.label}")
    inspect(case, folder / f"{kind}.gguf")


# --- one test per defect class found by the mutations ---------------------------------------------


def _with_kv(base: gm.Base, key: str, vtype: int, value: object) -> bytes:
    kvs = base.kv_bytes()
    index = next(i for i, kv in enumerate(base.layout.kvs) if kv.key == key)
    kvs[index] = gm.encode_kv(key, vtype, value)
    return base.rebuild(kvs)


def _refusal(data: bytes, path: Path) -> str:
    outcome = inspect(gm.Case("regression", path.name, data), path)
    assert isinstance(outcome, GGUFError)
    return str(outcome)


def test_string_where_an_integer_belongs(bases: dict[str, gm.Base], folder: Path) -> None:
    data = _with_kv(bases["llama"], "llama.block_count", gm.STRING, "twelve")
    message = _refusal(data, folder / "string-layers.gguf")
    assert "'llama.block_count' is a string ('twelve'), where an integer belongs" in message


def test_digits_in_a_string_are_not_an_integer(bases: dict[str, gm.Base], folder: Path) -> None:
    # int("12") would have accepted it; llama.cpp refuses a string here
    data = _with_kv(bases["llama"], "llama.context_length", gm.STRING, "12")
    assert "'llama.context_length' is a string" in _refusal(data, folder / "digits.gguf")


@pytest.mark.parametrize(("vtype", "value", "words"), [
    (gm.FLOAT32, float("nan"), "a number (nan)"),
    (gm.FLOAT64, float("inf"), "a number (inf)"),
    (gm.INT32, -1, "is -1, outside"),
    (gm.UINT64, 2**63, "is 9,223,372,036,854,775,808, outside"),
    (gm.BOOL, True, "a boolean"),
])
def test_numbers_that_are_not_a_layer_count(bases: dict[str, gm.Base], folder: Path,
                                            vtype: int, value: object, words: str) -> None:
    data = _with_kv(bases["llama"], "llama.block_count", vtype, value)
    assert words in _refusal(data, folder / "layers.gguf")


def test_vocabulary_string_length_past_2_to_63(bases: dict[str, gm.Base], folder: Path) -> None:
    # The vocabulary loop once fed such a length to struct as an offset: OverflowError.
    base = bases["llama"]
    tokens = next(kv for kv in base.layout.kvs if kv.key == "tokenizer.ggml.tokens")
    first_token = tokens.type_at + 4 + 12
    data = bytearray(base.data)
    struct.pack_into("<Q", data, first_token, 2**64 - 1)
    assert "tokenizer.ggml.tokens" in _refusal(bytes(data), folder / "vocab.gguf")


def test_unknown_ggml_type_names_the_file(bases: dict[str, gm.Base], folder: Path) -> None:
    base = bases["llama"]
    data = bytearray(base.data)
    struct.pack_into("<I", data, base.layout.tensors[0].type_at, 4)  # Q4_2, removed from ggml
    message = _refusal(bytes(data), folder / "q4_2.gguf")
    assert "unknown ggml type 4" in message


def test_alignment_of_the_wrong_type(bases: dict[str, gm.Base], folder: Path) -> None:
    data = _with_kv(bases["varied"], "general.alignment", gm.ARRAY, (gm.UINT32, [64]))
    assert "GGUF requires a uint32" in _refusal(data, folder / "alignment.gguf")


def _handmade(tensors: list[tuple[str, tuple[int, ...], int, int]], data_bytes: int = 64) -> bytes:
    """A minimal GGUF: an architecture, the given tensor records, ``data_bytes`` of data."""
    head = (b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1)
            + gm.encode_kv("general.architecture", gm.STRING, "llama")
            + b"".join(gm.encode_tensor_info(*t) for t in tensors))
    return head + b"\0" * (gm.pad(len(head), gm.DEFAULT_ALIGNMENT) - len(head) + data_bytes)


@pytest.mark.parametrize("shape", [(2**62, 4), (2**63,), (2**32, 2**32)])
def test_tensor_shape_beyond_int64(folder: Path, shape: tuple[int, ...]) -> None:
    message = _refusal(_handmade([("big", shape, 0, 0)]), folder / "shape.gguf")
    assert "more elements than ggml can hold" in message


def test_misaligned_and_overlapping_tensor_data(bases: dict[str, gm.Base], folder: Path) -> None:
    base = bases["llama"]
    first, second = base.layout.tensors[:2]
    data = bytearray(base.data)
    struct.pack_into("<Q", data, second.offset_at, second.offset + 1)
    assert "not a multiple of the file's alignment" in _refusal(bytes(data), folder / "mis.gguf")
    struct.pack_into("<Q", data, second.offset_at, first.offset)
    assert "overlap" in _refusal(bytes(data), folder / "overlap.gguf")


def test_duplicate_key_and_duplicate_tensor(bases: dict[str, gm.Base], folder: Path) -> None:
    base = bases["llama"]
    kvs = base.kv_bytes()
    kvs.append(gm.encode_kv("llama.block_count", gm.UINT32, 7))
    assert "appears twice" in _refusal(base.rebuild(kvs), folder / "dup-key.gguf")
    twins = _handmade([("w", (8,), 0, 0), ("w", (8,), 0, 32)])
    assert "tensor 'w' appears twice" in _refusal(twins, folder / "dup-tensor.gguf")
    assert isinstance(read_model_info(_written(
        _handmade([("w", (8,), 0, 0), ("v", (8,), 0, 32)]), folder / "distinct.gguf")), ModelInfo)


def _written(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


def test_state_space_model_without_attention_heads_is_accepted(
        bases: dict[str, gm.Base], folder: Path) -> None:
    # Mamba and RWKV converters write head_count 0: a real model, not a corrupt one.
    path = folder / "mamba-like.gguf"
    path.write_bytes(_with_kv(bases["llama"], "llama.attention.head_count", gm.UINT32, 0))
    info = read_model_info(path)
    assert (info.n_head, info.head_dim_k) == (0, 0)


def test_per_layer_values_are_read(base_infos: dict[str, ModelInfo]) -> None:
    info = base_infos["varied"]
    assert (info.n_head, info.n_head_kv, info.n_ff) == (4, 2, 128)  # largest per-layer values
    assert info.sliding_window_pattern == 3  # flags [swa, swa, full, swa]: period 3
    assert info.n_ctx_train == 32768 and info.n_vocab == 16 and info.file_type == "Q8_0"
    assert [t.shape for t in info.tensors][-1] == ()


def test_layer_of_a_tensor_named_with_a_non_ascii_digit() -> None:
    assert TensorInfo("blk.\u00b2.attn_q.weight", "F32", (4,), 16).layer is None
    assert TensorInfo("blk.12.attn_q.weight", "F32", (4,), 16).layer == 12


def test_a_lone_file_named_like_a_split_part_is_one_model(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    # llama.cpp goes by split.count; the missing '00002' part is not looked for
    lone = tmp_path / "tiny-00001-of-00002.gguf"
    shutil.copyfile(tiny_model, lone)
    info = read_model_info(lone)
    assert info.split_count == 1 and info.file_size == tiny_model.stat().st_size


def test_asking_about_a_later_split_part_reads_the_whole_model_once(tmp_path: Path) -> None:
    # Part 2 was counted twice and part 1, which holds the description, not at all.
    parts = _write_split(tmp_path, 2)
    first, second = read_model_info(parts[0]), read_model_info(parts[1])
    assert second.n_params == first.n_params == 2 * 4 * 32
    assert second.file_size == first.file_size == sum(p.stat().st_size for p in parts)
    assert (second.architecture, second.n_layers) == (first.architecture, first.n_layers)


# --- the library and the engine ------------------------------------------------------------------


def test_library_lists_broken_files_with_their_reason_beside_good_ones(
        bases: dict[str, gm.Base], tmp_path: Path) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    good = {"llama-a.gguf": bases["llama"].data, "llama-b.gguf": bases["llama"].data,
            "varied.gguf": bases["varied"].data}
    llama = bases["llama"]
    broken = {
        "string-layers.gguf": (_with_kv(llama, "llama.block_count", gm.STRING, "x"),
                               "'llama.block_count' is a string"),
        "nan-context.gguf": (_with_kv(llama, "llama.context_length", gm.FLOAT32, float("nan")),
                             "'llama.context_length' is a number (nan)"),
        "cut.gguf": (llama.data[:llama.layout.kv_end + 5], "truncated"),
        "nested.gguf": (_with_kv(llama, "tokenizer.ggml.scores", gm.ARRAY,
                                 (gm.ARRAY, [(gm.UINT8, [1])])), "array of arrays"),
    }
    for name, data in good.items():
        (shelf / name).write_bytes(data)
    for name, (data, _) in broken.items():
        (shelf / name).write_bytes(data)

    entries = {e.path.name: e for e in Library([str(shelf)]).scan()}

    assert set(entries) == set(good) | set(broken)
    for name in good:
        assert entries[name].error is None and entries[name].info is not None, name
        assert entries[name].info.file_size == len(good[name])
    for name, (_, reason) in broken.items():
        entry = entries[name]
        assert entry.info is None
        assert entry.error is not None and name in entry.error and reason in entry.error, \
            entry.error


@pytest.fixture
def host() -> Iterator[ModelHost]:
    h = ModelHost()
    yield h
    h.shutdown()


def test_engine_refuses_broken_files_and_its_parent_stays_healthy(
        host: ModelHost, tiny_model: Path, tmp_path: Path) -> None:
    good = gm.Base.of("tiny", tiny_model)
    lay = good.layout
    embd = lay.tensors[0]
    wrong_shape = bytearray(good.data)
    struct.pack_into("<Q", wrong_shape, embd.n_dims_at + 4, 2**40)  # row of 2^40 values
    bad_type = bytearray(good.data)
    struct.pack_into("<I", bad_type, embd.type_at, 4)  # Q4_2, removed from ggml
    broken = {
        "data-cut.gguf": good.data[:lay.data_start + (lay.size - lay.data_start) // 2],
        "tensor-shape.gguf": bytes(wrong_shape),
        "tensor-type.gguf": bytes(bad_type),
        "string-layers.gguf": _with_kv(good, "llama.block_count", gm.STRING, "x"),
    }
    for name, data in broken.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(GGUFError) as inspected:  # the inspector refuses it...
            read_model_info(path)
        started = time.monotonic()
        # ... and so does the engine, with the same reason, before llama.cpp parses the file
        with pytest.raises(EngineError) as refused:
            host.load_sync(LoadSettings(str(path), n_ctx=256), timeout=60)
        assert str(inspected.value) in str(refused.value), name
        assert time.monotonic() - started < 60
    loaded = host.load_sync(LoadSettings(str(tiny_model), n_ctx=256), timeout=60)
    assert loaded.path == str(tiny_model)
    events = list(host.chat_stream((ChatMessage("user", "Hello"),),
                                   Sampling(max_tokens=8, seed=1), timeout=60))
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.metrics.generated_tokens == 8
    assert sum(isinstance(e, Token) for e in events) >= 1
    assert host.alive
