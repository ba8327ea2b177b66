"""The curated catalog of models QuantDesk recommends (``resources/catalog.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.core import quant_types
from app.core.gguf_info import ModelInfo, TensorInfo
from app.core.resources import resource


@dataclass(frozen=True)
class CatalogModel:
    """One model's dimensions, license and where its files are."""

    name: str
    family: str
    n_params: int
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    n_vocab: int
    tied_embeddings: bool
    sliding_window: int | None
    sliding_window_pattern: int | None
    license: str
    gguf_repo: str
    original_repo: str

    def as_model_info(self, quant: str) -> ModelInfo:
        """A ModelInfo with the tensor sizes this model would have at ``quant``, so that the
        memory estimate can be used before any file exists. Each block is one tensor of the
        block's parameters; embeddings (and an untied output) are their own tensors."""
        bpw = quant_types.by_name(quant).bits_per_weight
        embedding = self.n_vocab * self.n_embd
        outputs = 0 if self.tied_embeddings else embedding
        per_layer = max(0, self.n_params - embedding - outputs) // self.n_layers

        def tensor(name: str, n: int, rows: int) -> TensorInfo:
            return TensorInfo(name, quant, (max(1, n // rows), rows), int(n * bpw / 8))

        tensors = [tensor("token_embd.weight", embedding, self.n_vocab)]
        if outputs:
            tensors.append(tensor("output.weight", outputs, self.n_vocab))
        tensors += [tensor(f"blk.{i}.weights", per_layer, self.n_embd)
                    for i in range(self.n_layers)]
        total = sum(t.n_bytes for t in tensors)
        return ModelInfo(
            path=Path(f"{self.name}-{quant}.gguf"), file_size=total, architecture=self.family,
            name=self.name, n_params=self.n_params, n_layers=self.n_layers, n_embd=self.n_embd,
            n_ff=self.n_ff, n_head=self.n_head, n_head_kv=self.n_head_kv,
            head_dim_k=self.head_dim, head_dim_v=self.head_dim, n_ctx_train=self.n_ctx_train,
            n_vocab=self.n_vocab, n_experts=None, sliding_window=self.sliding_window,
            sliding_window_pattern=self.sliding_window_pattern, file_type=quant,
            file_type_id=quant_types.by_name(quant).ftype, tensor_types=(), tensor_bytes=total,
            has_chat_template=True, chat_template=None, tensors=tuple(tensors))


def load(path: Path | None = None) -> list[CatalogModel]:
    """Read the catalog; raises ValueError with the entry's name when an entry is malformed."""
    data = json.loads((path or resource("catalog.json")).read_text(encoding="utf-8"))
    models = []
    for raw in data["models"]:
        try:
            models.append(CatalogModel(**raw))
        except TypeError as exc:
            raise ValueError(f"catalog entry {raw.get('name', '?')}: {exc}") from None
    return models
