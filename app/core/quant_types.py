"""llama.cpp's model file types, in one table used by the CLI, the wizard and the UI.

``bits_per_weight`` is what a whole model of that type takes on average, tensor mixes included,
from llama.cpp's quantizer table (its sizes for Llama-3-8B, 8.03 B parameters): use it to
estimate a file's size before it exists. ``ftype`` is llama.cpp's ``LLAMA_FTYPE_*`` value,
which is also what ``general.file_type`` holds in a GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class QuantType:
    """One llama.cpp file type."""

    name: str
    ftype: int
    bits_per_weight: float
    description: str
    needs_imatrix: bool = False
    recommended: bool = False

    def estimated_bytes(self, n_params: int) -> int:
        """Rough file size for a model with ``n_params`` parameters of this type."""
        return int(n_params * self.bits_per_weight / 8)


_TYPES: tuple[QuantType, ...] = (
    QuantType("F32", 0, 32.0, "Full 32-bit floats: the exact original, four times a F16 file."),
    QuantType("F16", 1, 16.0, "16-bit floats: the usual reference; no visible quality loss."),
    QuantType("BF16", 32, 16.0, "16-bit brain floats: like F16, keeps BF16-trained weights exact."),
    QuantType("Q8_0", 7, 8.50, "8-bit: indistinguishable from F16 at half the size.",
              recommended=True),
    QuantType("Q6_K", 18, 6.57, "6-bit: near-lossless, a safe choice when it fits.",
              recommended=True),
    QuantType("Q5_K_M", 17, 5.70, "5-bit mix: very small loss, good balance for large memory.",
              recommended=True),
    QuantType("Q5_K_S", 16, 5.57, "5-bit: a little smaller than Q5_K_M, a little more loss."),
    QuantType("Q5_1", 9, 6.04, "Legacy 5-bit with offsets; Q5_K_M is better at the same size."),
    QuantType("Q5_0", 8, 5.57, "Legacy 5-bit; Q5_K_S is better at the same size."),
    QuantType("Q4_K_M", 15, 4.90, "4-bit mix: the popular default, small loss at about 30% of F16.",
              recommended=True),
    QuantType("Q4_K_S", 14, 4.67, "4-bit: smaller than Q4_K_M, noticeably more loss."),
    QuantType("Q4_1", 3, 5.11, "Legacy 4-bit with offsets; Q4_K_M is better."),
    QuantType("Q4_0", 2, 4.64, "Legacy 4-bit; fast on some CPUs and GPUs, more loss than Q4_K."),
    QuantType("IQ4_NL", 25, 4.50, "4-bit non-linear: better than Q4_0 at the same size."),
    QuantType("IQ4_XS", 30, 4.25, "4.25-bit non-linear: close to Q4_K_S quality, smaller."),
    QuantType("Q3_K_L", 13, 4.31, "3-bit mix, largest: for tight memory; loss becomes visible."),
    QuantType("Q3_K_M", 12, 4.00, "3-bit mix: when Q4 does not fit; clear but usable loss.",
              recommended=True),
    QuantType("Q3_K_S", 11, 3.65, "3-bit: small, with marked loss."),
    QuantType("IQ3_M", 27, 3.66, "3.66-bit mix (I-quant): better than Q3_K_S at similar size."),
    QuantType("IQ3_S", 26, 3.44, "3.44-bit I-quant; works best with an importance matrix."),
    QuantType("IQ3_XS", 22, 3.30, "3.3-bit I-quant; works best with an importance matrix."),
    QuantType("IQ3_XXS", 23, 3.06, "3.06-bit I-quant; works best with an importance matrix."),
    QuantType("Q2_K", 10, 3.17, "2-bit mix: the smallest K-quant; large loss, last resort.",
              recommended=True),
    QuantType("Q2_K_S", 21, 2.97, "2-bit, smaller than Q2_K; needs an importance matrix.",
              needs_imatrix=True),
    QuantType("IQ2_M", 29, 2.70, "2.7-bit I-quant; needs calibration to be usable."),
    QuantType("IQ2_S", 28, 2.50, "2.5-bit I-quant; needs an importance matrix.",
              needs_imatrix=True),
    QuantType("IQ2_XS", 20, 2.31, "2.31-bit I-quant; needs an importance matrix.",
              needs_imatrix=True),
    QuantType("IQ2_XXS", 19, 2.06, "2.06-bit I-quant; needs an importance matrix.",
              needs_imatrix=True),
    QuantType("IQ1_M", 31, 1.75, "1.75-bit: extreme; only for very large models, with imatrix.",
              needs_imatrix=True),
    QuantType("IQ1_S", 24, 1.56, "1.56-bit: extreme; only for very large models, with imatrix.",
              needs_imatrix=True),
    QuantType("TQ2_0", 37, 2.06, "Ternary 2-bit: only for models trained ternary (BitNet)."),
    QuantType("TQ1_0", 36, 1.69, "Ternary 1.69-bit: only for models trained ternary (BitNet)."),
)

ALL: tuple[QuantType, ...] = _TYPES
_BY_NAME = {t.name: t for t in _TYPES}
_BY_FTYPE = {t.ftype: t for t in _TYPES}

#: The type the app assumes when it speaks of "a model" without a type (most downloads are it).
DEFAULT_NAME = "Q4_K_M"


def by_name(name: str) -> QuantType:
    """Look a type up by its name (case-insensitive); KeyError lists the valid names."""
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        raise KeyError(f"unknown quant type {name!r}; known: {', '.join(_BY_NAME)}") from None


def is_known(name: str) -> bool:
    """Whether ``name`` is a type in the table (case-insensitive)."""
    return name.upper() in _BY_NAME


def by_ftype(ftype: int) -> QuantType | None:
    """Look a type up by llama.cpp's ftype id (``general.file_type``); None if unknown."""
    return _BY_FTYPE.get(ftype)


def ftype_name(ftype: int | None) -> str:
    """Human name for a ``general.file_type`` value, 'unknown' when absent or unlisted."""
    if ftype is None:
        return "unknown"
    qt = _BY_FTYPE.get(ftype)
    return qt.name if qt else f"unknown ({ftype})"


_NAME_RE = re.compile(
    r"(?<![A-Za-z0-9])(" + "|".join(sorted((t.name for t in _TYPES), key=len, reverse=True))
    + r")(?![A-Za-z0-9])", re.IGNORECASE)


def name_in(filename: str) -> str | None:
    """The quant type a file name carries ('Llama-3.2-1B-Instruct-Q4_K_M.gguf' → 'Q4_K_M')."""
    match = _NAME_RE.search(filename.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else None


def without_name(stem: str) -> str:
    """A file stem with its quant type and the separator before it removed."""
    return re.sub(r"[-._]?" + _NAME_RE.pattern, "", stem, count=1, flags=re.IGNORECASE) or stem
