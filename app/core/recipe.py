"""An auto mix as a recipe: a readable, saved, reusable list of tensor pattern → type rules.

A recipe is what ``llama-quantize --tensor-type`` and ``QuantizeOptions.overrides`` take: regular
expressions on tensor names, each with a ggml type, on top of a base file type that decides
every tensor no rule names. llama.cpp's quantizer uses the first rule whose pattern matches a
tensor (checked against its dry run in tests/unit/test_automix.py), so a recipe lists the
exceptions first and each kind's usual type last: 'ffn_down in layers 0, 1, 29 → Q6_K' before
'ffn_down → Q4_K'. Patterns are anchored, so that 'output' does not also match
'attn_output', and they name layers by number, so a recipe applies to any quantization of a
model with the same architecture and layer count (a fine-tune, another importance matrix).
A type a tensor's rows cannot take is replaced the way llama.cpp does it
(``automix.fallback_type``), and ``planned_types`` says which.

Recipes are JSON files under ``data_home()/recipes``, written atomically.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core import automix, paths
from app.core.atomic import write_text_atomic

FORMAT = 1


class RecipeError(Exception):
    """A recipe cannot be read, written or applied; the message says why."""


@dataclass(frozen=True)
class Rule:
    """Tensors whose name matches ``pattern`` (a regular expression, searched) get ``type``."""

    pattern: str
    type_name: str
    note: str = ""

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


@dataclass(frozen=True)
class Recipe:
    """A mix of tensor types for one architecture, and what it was made for."""

    name: str
    base: str  # the file type the quantizer runs as; it decides tensors no rule names
    rules: tuple[Rule, ...]
    architecture: str
    n_layers: int
    budget: str = ""  # what it was made for: 'the size of Q4_K_M', '4.50 bits per weight'
    source: str = ""  # the model file it was measured on
    bytes: int = 0  # its tensor bytes on that model (llama.cpp's dry run)
    bits_per_weight: float = 0.0
    predicted_kld: float | None = None
    measure: str = ""  # how the sensitivity was known: proxy, quick or full
    created: float = field(default_factory=time.time)

    def overrides(self) -> tuple[tuple[str, str], ...]:
        """(pattern, type) pairs in order, for ``QuantizeOptions.overrides``."""
        return tuple((r.pattern, r.type_name) for r in self.rules)

    def rule_for(self, name: str) -> Rule | None:
        """The rule llama.cpp applies to tensor ``name``: the first that matches."""
        return next((r for r in self.rules if r.matches(name)), None)

    def planned_types(self, tensors: Iterable[tuple[str, int]]) -> dict[str, str]:
        """The type each named tensor (name, row width) will be stored as: its rule's type,
        or llama.cpp's substitute when its rows cannot take it. Tensors no rule names are
        left out (the base type's own recipe decides them)."""
        planned = {}
        for name, width in tensors:
            rule = self.rule_for(name)
            if rule is not None:
                planned[name] = automix.fallback_type(rule.type_name, width)
        return planned

    def llama_quantize_args(self, source: str = "SOURCE.gguf", out: str = "OUT.gguf",
                            imatrix: str | None = None) -> list[str]:
        """The same quantization as a llama-quantize command line (argv). llama-quantize
        lowercases patterns and types; a recipe's patterns are lowercase already."""
        args = ["llama-quantize"]
        if imatrix:
            args += ["--imatrix", imatrix]
        for rule in self.rules:
            args += ["--tensor-type", f"{rule.pattern}={rule.type_name.lower()}"]
        return [*args, source, out, self.base]

    def command_line(self, source: str = "SOURCE.gguf", out: str = "OUT.gguf",
                     imatrix: str | None = None) -> str:
        """``llama_quantize_args`` quoted for a POSIX shell."""
        return shlex.join(self.llama_quantize_args(source, out, imatrix))

    def describe(self) -> list[str]:
        """One line per rule, for people: 'ffn_down, layers 0–3, 29 → Q6_K'."""
        return [f"{r.note or r.pattern} → {r.type_name}" for r in self.rules]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "base": self.base,
                "rules": [{"pattern": r.pattern, "type": r.type_name, "note": r.note}
                          for r in self.rules],
                "architecture": self.architecture, "n_layers": self.n_layers,
                "budget": self.budget, "source": self.source, "bytes": self.bytes,
                "bits_per_weight": self.bits_per_weight,
                "predicted_kld": self.predicted_kld, "measure": self.measure,
                "created": self.created}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Recipe:
        """A recipe from its JSON form; RecipeError when it is not one this version reads."""
        if data.get("format") != FORMAT:
            raise RecipeError("This is not a QuantDesk recipe, or one from another version.")
        try:
            rules = tuple(Rule(str(r["pattern"]), str(r["type"]).upper(), str(r.get("note", "")))
                          for r in data["rules"])
            for rule in rules:
                re.compile(rule.pattern)
                automix.block_size(rule.type_name)  # a ggml type this build knows
            return Recipe(str(data["name"]), str(data["base"]).upper(), rules,
                          str(data["architecture"]), int(data["n_layers"]),
                          str(data.get("budget", "")), str(data.get("source", "")),
                          int(data.get("bytes", 0)), float(data.get("bits_per_weight", 0.0)),
                          data.get("predicted_kld"), str(data.get("measure", "")),
                          float(data.get("created", 0.0)))
        except (KeyError, TypeError, ValueError, re.error) as exc:
            raise RecipeError(f"The recipe is damaged: {exc}") from None


def _ranges(layers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → '0–2, 5, 7–8'."""
    parts: list[str] = []
    ordered = sorted(layers)
    start = prev = ordered[0]
    for n in [*ordered[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _layers_pattern(kind: str, layers: Sequence[int] | None) -> str:
    escaped = re.escape(kind)
    if layers is None:
        return rf"^blk\.\d+\.{escaped}\.weight$"
    return rf"^blk\.({'|'.join(str(n) for n in sorted(layers))})\.{escaped}\.weight$"


def rules_for(types: Mapping[str, str]) -> tuple[Rule, ...]:
    """Rules that give every named tensor its type: per kind of block tensor, its most common
    type for all layers (last), after one rule per other type naming its layers; one rule
    per tensor outside the blocks."""
    by_kind: dict[str, dict[int, str]] = {}
    outside: list[Rule] = []
    for name, type_name in sorted(types.items()):
        layer, kind = automix.tensor_kind(name)
        if layer is None:
            outside.append(Rule("^" + re.escape(name) + "$", type_name, kind))
        else:
            by_kind.setdefault(kind, {})[layer] = type_name
    rules: list[Rule] = []
    order = {k: i for i, k in enumerate(automix.KIND_ORDER)}
    for kind in sorted(by_kind, key=lambda k: (order.get(k, len(order)), k)):
        layers = by_kind[kind]
        counts: dict[str, int] = {}
        for t in layers.values():
            counts[t] = counts.get(t, 0) + 1
        common = max(counts, key=lambda t: (counts[t], automix.bits_per_weight(t)))
        for type_name in sorted(counts, key=automix.bits_per_weight, reverse=True):
            if type_name == common:
                continue
            chosen = [n for n, t in layers.items() if t == type_name]
            rules.append(Rule(_layers_pattern(kind, chosen), type_name,
                              f"{kind}, layer{'s' if len(chosen) > 1 else ''} "
                              f"{_ranges(chosen)}"))
        rules.append(Rule(_layers_pattern(kind, None), common, f"{kind}, every other layer"
                          if len(counts) > 1 else f"{kind}, every layer"))
    return (*outside, *rules)


def recipes_dir() -> Path:
    """Where recipes are saved: ``data_home()/recipes``."""
    folder = paths.data_home() / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save(recipe: Recipe, path: Path | None = None) -> Path:
    """Write ``recipe`` as JSON (to ``recipes_dir()/<name>.json`` by default); returns where."""
    target = Path(path) if path is not None else recipes_dir() / f"{recipe.name}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, json.dumps(recipe.to_json(), indent=2))
    except OSError as exc:
        raise RecipeError(f"The recipe could not be saved to {target}: "
                          f"{exc.strerror or exc}") from None
    return target


def load(path: Path) -> Recipe:
    """Read a recipe file; RecipeError when it cannot be read or is not a recipe."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecipeError(f"{Path(path).name} cannot be read as a recipe: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{Path(path).name} is not a recipe.")
    return Recipe.from_json(data)


def saved() -> list[Path]:
    """The saved recipes, newest first."""
    return sorted(recipes_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
