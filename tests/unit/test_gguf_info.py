"""GGUF inspection on real files, and clear errors on broken ones."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import pytest

from app.core.gguf_info import (
    GGUFError,
    HeaderIncomplete,
    model_info_from_headers,
    parse_header,
    read_model_info,
    split_parts,
)
from tests.helpers.tiny_model import write_tiny_llama


def test_tiny_model_dimensions_match_what_was_written(tiny_model: Path) -> None:
    info = read_model_info(tiny_model)
    assert info.architecture == "llama"
    assert (info.n_layers, info.n_embd, info.n_ff) == (2, 256, 512)
    assert (info.n_head, info.n_head_kv, info.head_dim_k, info.head_dim_v) == (4, 2, 64, 64)
    assert info.n_vocab == 261
    assert info.n_ctx_train == 2048
    assert info.file_type == "F32"
    assert info.has_chat_template and "im_start" in (info.chat_template or "")
    # token_embd + output (261 x 256 each), 2 layers of q,k,v,o,gate,up,down and norms
    per_layer = 256 * 256 * 2 + 128 * 256 * 2 + 512 * 256 * 3 + 256 * 2
    assert info.n_params == 2 * 261 * 256 + 256 + 2 * per_layer
    assert info.bits_per_weight == pytest.approx(32.0)
    assert info.tensor_types[0].type_name == "F32"


def test_f16_model_reports_f16_and_its_tensor_mix(tiny_model_f16: Path) -> None:
    info = read_model_info(tiny_model_f16)
    assert info.file_type == "F16"
    types = {t.type_name: t for t in info.tensor_types}
    assert set(types) == {"F16", "F32"}
    assert types["F32"].count == 1 + 2 * 2  # output_norm + attn_norm/ffn_norm per layer
    assert 16.0 < info.bits_per_weight < 16.1


def test_embedded_smollm2_header(smollm2: Path) -> None:
    info = read_model_info(smollm2)
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.n_layers == 30 and info.n_embd == 576 and info.n_head == 9 and info.n_head_kv == 3
    assert info.n_vocab == 49152
    assert 134_000_000 < info.n_params < 136_000_000
    assert info.has_chat_template
    assert info.file_size == smollm2.stat().st_size
    assert sum(t.n_bytes for t in info.tensor_types) <= info.file_size


def test_reading_the_embedded_model_is_fast(smollm2: Path) -> None:
    # A library scan reads many headers: this one must not parse the 49k-token vocabulary slowly.
    start = time.perf_counter()
    read_model_info(smollm2)
    assert time.perf_counter() - start < 1.0


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip file" * 10)
    with pytest.raises(GGUFError, match="not a GGUF model file"):
        read_model_info(bad)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_model_info(empty)
    with pytest.raises(GGUFError, match="does not exist"):
        read_model_info(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a file"):
        read_model_info(tmp_path)


def test_truncated_inside_tensor_data(tiny_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = tiny_model.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    start = time.perf_counter()
    with pytest.raises(GGUFError, match="truncated"):
        read_model_info(cut)
    assert time.perf_counter() - start < 0.5


def test_truncated_inside_header(tiny_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:1000])
    with pytest.raises(GGUFError, match="truncated"):
        read_model_info(cut)


def test_header_claiming_impossible_counts(tiny_model: Path, tmp_path: Path) -> None:
    liar = tmp_path / "liar.gguf"
    data = bytearray(tiny_model.read_bytes())
    struct.pack_into("<Q", data, 8, 10**15)  # tensor count
    liar.write_bytes(bytes(data))
    start = time.perf_counter()
    with pytest.raises(GGUFError, match="corrupt header"):
        read_model_info(liar)
    assert time.perf_counter() - start < 0.5


def test_unsupported_version(tiny_model: Path, tmp_path: Path) -> None:
    odd = tmp_path / "v9.gguf"
    data = bytearray(tiny_model.read_bytes())
    struct.pack_into("<I", data, 4, 9)
    odd.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="version 9"):
        read_model_info(odd)


def test_garbage_after_magic(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + b"\xff" * 64)
    with pytest.raises(GGUFError):
        read_model_info(junk)


def _write_split(tmp_path: Path, n_parts: int) -> list[Path]:
    """Two-part split of a tiny model, written the way llama.cpp's gguf-split names parts."""
    paths = []
    for i in range(n_parts):
        path = tmp_path / f"tiny-{i + 1:05d}-of-{n_parts:05d}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_uint16("split.no", i)
        writer.add_uint16("split.count", n_parts)
        writer.add_int32("split.tensors.count", n_parts)
        if i == 0:
            writer.add_block_count(1)
            writer.add_embedding_length(32)
            writer.add_head_count(2)
        writer.add_tensor(f"t{i}.weight", __import__("numpy").zeros((4, 32), dtype="float32"))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        paths.append(path)
    return paths


def test_split_model_counts_all_parts(tmp_path: Path) -> None:
    parts = _write_split(tmp_path, 2)
    info = read_model_info(parts[0])
    assert info.split_count == 2
    assert list(info.split_files) == parts
    assert info.n_params == 2 * 4 * 32
    assert info.file_size == sum(p.stat().st_size for p in parts)
    assert split_parts(parts[0]) == tuple(parts)


def test_split_model_with_missing_part(tmp_path: Path) -> None:
    parts = _write_split(tmp_path, 2)
    parts[1].unlink()
    with pytest.raises(GGUFError, match=r"00002-of-00002\.gguf is missing"):
        read_model_info(parts[0])


def test_writer_roundtrip_of_a_different_shape(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_layer=3, n_embd=128, n_ff=256, n_head=2,
                            n_head_kv=1, chat_template=None)
    info = read_model_info(path)
    assert (info.n_layers, info.n_embd, info.n_head, info.n_head_kv) == (3, 128, 2, 1)
    assert info.head_dim_k == 64
    assert not info.has_chat_template


# --- a header from the file's first bytes (read over HTTP, the weights not there) -----------


def test_every_prefix_parses_to_the_file_or_asks_for_more(tiny_model: Path) -> None:
    """The oracle is the memory-mapped read of the whole file: a prefix either asks for more
    bytes (never fewer than it has) or gives exactly the same model."""
    data = tiny_model.read_bytes()
    whole = read_model_info(tiny_model)
    header_end = min(t.offset for t in whole.tensors)
    complete_at = None
    for length in [*range(0, header_end + 64, 61), header_end]:
        try:
            header = parse_header(data[:length], len(data), tiny_model)
        except HeaderIncomplete as exc:
            assert exc.needed > length
            assert complete_at is None, f"{length} bytes asked for more after {complete_at} parsed"
            continue
        complete_at = complete_at or length
        assert model_info_from_headers([header]) == whole
    assert complete_at is not None and complete_at <= header_end


def test_a_header_claiming_more_than_the_file_is_damaged_not_incomplete(
        tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    header_end = min(t.offset for t in read_model_info(tiny_model).tensors)
    # the same first bytes, but the file is said to end inside its own header
    with pytest.raises(GGUFError, match="truncated"):
        parse_header(data[:header_end], header_end - 100, tiny_model)
    # a vocabulary length past the end of the whole file is refused at once
    liar = bytearray(data[:header_end])
    offset = liar.find(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4
    struct.pack_into("<Q", liar, offset, 10**12)
    with pytest.raises(GGUFError, match="more than the rest of the file"):
        parse_header(bytes(liar[:4096]), len(data), tiny_model)


def test_not_gguf_from_a_prefix(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="not a GGUF model file"):
        parse_header(b"<html>404</html>", 10**9, tmp_path / "x.gguf")


def test_split_headers_make_the_same_model_as_the_files(tmp_path: Path) -> None:
    parts = _write_split(tmp_path, 2)
    headers = [parse_header(p.read_bytes()[:4096], p.stat().st_size, p) for p in parts]
    assert model_info_from_headers(headers) == read_model_info(parts[0])
    with pytest.raises(GGUFError, match="2-part model"):
        model_info_from_headers(headers[:1])
