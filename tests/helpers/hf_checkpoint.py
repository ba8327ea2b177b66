"""Write a tiny random Llama checkpoint in Hugging Face format, for conversion tests.

The tokenizer is a SentencePiece model trained here on a few hundred generated sentences:
llama.cpp's converter identifies BPE pre-tokenizers by hashing their output on a fixed text, so a
freshly trained BPE tokenizer is rejected, while a SentencePiece ``tokenizer.model`` is read as
it is. Byte fallback keeps every input encodable. About 0.3 MB; written in a few seconds (most of
it importing torch and transformers).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

WORDS = ("cats", "dogs", "models", "tensors", "weights", "layers", "tokens", "rivers", "music")


def _corpus() -> list[str]:
    lines = [f"Sentence number {i} talks about {w} and numbers like {i * 7}."
             for i, w in enumerate(WORDS * 40)]
    lines += ["The quick brown fox jumps over the lazy dog."] * 20
    return lines


def write_hf_llama(folder: Path, *, architecture: str = "LlamaForCausalLM") -> Path:
    """Write config.json, model.safetensors, tokenizer.model and tokenizer_config.json."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=proto, vocab_size=400,
        model_type="unigram", byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(proto.getvalue())
    config = LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True}))
    if architecture != "LlamaForCausalLM":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["architectures"] = [architecture]
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder
