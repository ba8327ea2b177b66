"""Write a tiny random-weight Llama GGUF that llama.cpp loads and generates from in milliseconds.

The vocabulary is SentencePiece-style with 256 byte tokens, so any text tokenizes. The weights
are random, with one deliberate structure: dimension 0 of the residual stream is a positive
constant that no layer writes to, and the output rows of the control tokens (BOS, EOS, the
ChatML markers) and of every byte outside printable ASCII point against it. So the model never
samples a control token and always writes valid text, and generation runs to ``max_tokens``:
tests of streaming and stopping get long replies on demand. Another vocabulary (``Vocabulary``:
a real model's, as ``bench/shaped_model.py`` gives a large model's layers SmolLM2's) keeps the
same structure: only the tokens it marks as text are ever sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONTROL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class Vocabulary:
    """A model's tokenizer: ``write`` adds its ``tokenizer.*`` keys to a GGUF writer; ``text``
    says for each token whether the model may write it."""

    write: Callable[[gguf.GGUFWriter], None]
    text: np.ndarray


def byte_vocabulary(chat_template: str | None = CHATML_TEMPLATE, *,
                    extra: Sequence[tuple[str, gguf.TokenType]] = (),
                    add_eos: bool = False) -> Vocabulary:
    """SentencePiece-style: the control tokens, ``extra`` tokens (text and type) after them,
    and 256 byte tokens; text is printable ASCII and newlines. ``add_eos``: llama.cpp ends a
    tokenized text with EOS."""
    tokens = list(CONTROL_TOKENS) + [t for t, _ in extra] + [f"<0x{i:02X}>" for i in range(256)]
    types = ([gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 4 + [k for _, k in extra]
             + [gguf.TokenType.BYTE] * 256)
    first_byte = len(CONTROL_TOKENS) + len(extra)
    text = np.zeros(len(tokens), dtype=bool)
    text[[first_byte + b for b in range(256) if 0x20 <= b < 0x7F or b == 0x0A]] = True

    def write(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_token_types([int(t) for t in types])
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(add_eos)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

    return Vocabulary(write, text)


def write_tiny_llama(
    path: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 256,
    n_ff: int = 512,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ctx: int = 2048,
    seed: int = 0,
    f16: bool = False,
    chat_template: str | None = CHATML_TEMPLATE,
    name: str = "tiny-random-llama",
    vocabulary: Vocabulary | None = None,
) -> Path:
    """Write the model to ``path`` and return it. ``f16`` stores the matrices as F16;
    ``vocabulary`` replaces the byte vocabulary (``chat_template`` is then its business)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary or byte_vocabulary(chat_template)
    n_vocab = len(vocab.text)
    head_dim = n_embd // n_head
    mat_dtype = np.float16 if f16 else np.float32

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    vocab.write(writer)

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    embd = mat(n_vocab, n_embd, 1.0)
    embd[:, 0] = 4.0  # the constant, positive residual dimension
    output = mat(n_vocab, n_embd, 1.0)
    output[:, 0] = 0.0
    banned = ~vocab.text
    output[banned] = 0.0
    output[banned, 0] = -50.0  # control tokens and non-text bytes: always far below the rest

    writer.add_tensor("token_embd.weight", embd.astype(mat_dtype))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", output.astype(mat_dtype))
    proj_scale = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        attn_out = mat(n_embd, n_embd, proj_scale)
        attn_out[0] = 0.0  # no layer writes residual dimension 0
        ffn_down = mat(n_embd, n_ff, 1.0 / np.sqrt(n_ff))
        ffn_down[0] = 0.0
        layer = {
            "attn_norm.weight": np.ones(n_embd, dtype=np.float32),
            "attn_q.weight": mat(n_embd, n_embd, proj_scale).astype(mat_dtype),
            "attn_k.weight": mat(n_head_kv * head_dim, n_embd, proj_scale).astype(mat_dtype),
            "attn_v.weight": mat(n_head_kv * head_dim, n_embd, proj_scale).astype(mat_dtype),
            "attn_output.weight": attn_out.astype(mat_dtype),
            "ffn_norm.weight": np.ones(n_embd, dtype=np.float32),
            "ffn_gate.weight": mat(n_ff, n_embd, proj_scale).astype(mat_dtype),
            "ffn_up.weight": mat(n_ff, n_embd, proj_scale).astype(mat_dtype),
            "ffn_down.weight": ffn_down.astype(mat_dtype),
        }
        for tensor_name, data in layer.items():
            writer.add_tensor(f"blk.{i}.{tensor_name}", data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
