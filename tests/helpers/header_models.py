"""GGUF files whose header and size are chosen: a vocabulary of N tokens (with merges, as BPE
models carry them) and weights of a chosen total size, for tests and benches of reading a
model's header over HTTP. The weights are zeros: these files are parsed and estimated, never
loaded in llama.cpp (``tiny_model`` is the one that loads)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_header_model(path: Path, *, n_vocab: int = 32_000, weight_bytes: int = 100 * 2**20,
                       n_layer: int = 4, n_embd: int = 256, merges: bool = True,
                       n_ctx: int = 8192) -> Path:
    """A Llama-shaped GGUF at ``path``: ``n_vocab`` tokens (and as many merges), ``n_layer``
    blocks whose F16 matrices make the file about ``weight_bytes`` beyond its embeddings."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(path.stem)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    n_ff = max(256, weight_bytes // (n_layer * 2 * 3 * n_embd) // 32 * 32)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"token-{i:06d}" for i in range(n_vocab)])
    writer.add_token_types([1] * n_vocab)
    if merges:
        writer.add_token_merges([f"tok en-{i:06d}" for i in range(n_vocab)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("token_embd.weight", np.zeros((n_vocab, n_embd), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    kv = 2 * n_embd // 4
    for i in range(n_layer):
        for name, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (kv, n_embd)),
                            ("attn_v", (kv, n_embd)), ("attn_output", (n_embd, n_embd)),
                            ("ffn_gate", (n_ff, n_embd)), ("ffn_up", (n_ff, n_embd)),
                            ("ffn_down", (n_embd, n_ff))):
            writer.add_tensor(f"blk.{i}.{name}.weight", np.zeros(shape, dtype=np.float16))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
