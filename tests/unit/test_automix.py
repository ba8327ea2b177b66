"""The auto mix: allocation within the budget, recipes, the proxy against measured KLD, and
llama.cpp's fallback for rows a type cannot take.

Every size and type here is checked against llama.cpp itself (its quantizer's dry run, or a
real quantization), never against the code under test alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import automix as am
from app.core import recipe as rc
from app.core import resources
from app.engine import sensitivity as sens
from app.engine.imatrix import compute
from app.engine.quantize import QuantizeOptions, estimate_size, quantize
from app.pipeline.automix import allocate_recipe, stock_bytes
from tests.helpers.tiny_model import write_tiny_llama

TEXT = resources.calibration_text()


def _last(job: object) -> object:
    *_, last = job  # type: ignore[misc]
    return last


@pytest.fixture(scope="module")
def tiny_imatrix(tiny_model_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("automix") / "tiny.imatrix.gguf"
    _last(compute(tiny_model_f16, TEXT, out, n_ctx=128, max_chunks=4, dataset="test"))
    return out


@pytest.fixture(scope="module")
def tiny_table(tiny_model_f16: Path, tiny_imatrix: Path) -> am.SensitivityTable:
    table = _last(sens.proxy(tiny_model_f16, tiny_imatrix))
    assert isinstance(table, am.SensitivityTable)
    return table


# ----------------------------------------------------------------------------- the budget

@st.composite
def _problems(draw: st.DrawFn) -> tuple[dict[str, list[am.Option]], int]:
    options: dict[str, list[am.Option]] = {}
    for i in range(draw(st.integers(1, 12))):
        n = draw(st.integers(1, 6))
        sizes = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n))
        losses = draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=n, max_size=n))
        options[f"t{i}"] = [am.Option(f"T{j}", b, loss)
                            for j, (b, loss) in enumerate(zip(sizes, losses, strict=True))]
    cheapest = sum(min(o.bytes for o in opts) for opts in options.values())
    return options, cheapest + draw(st.integers(0, 60_000))


@settings(max_examples=300, deadline=None)
@given(_problems())
def test_allocation_never_exceeds_the_budget(problem: tuple[dict[str, list[am.Option]], int]
                                             ) -> None:
    options, budget = problem
    chosen = am.allocate_options(options, budget)
    assert set(chosen) == set(options)
    assert sum(o.bytes for o in chosen.values()) <= budget
    # and nothing is left on the table: no single change that fits would lower the loss
    room = budget - sum(o.bytes for o in chosen.values())
    for name, opts in options.items():
        for o in opts:
            assert not (o.bytes - chosen[name].bytes <= room and o.loss < chosen[name].loss), \
                (name, o, chosen[name])


def test_a_budget_below_the_smallest_mix_is_refused() -> None:
    with pytest.raises(am.AutomixError, match="below the smallest mix"):
        am.allocate_options({"a": [am.Option("Q8_0", 100, 0.0)]}, 99)


@pytest.mark.parametrize("budget", ["Q4_K_M", "Q3_K_M", "Q2_K", "4.0"])
def test_the_quantized_mix_is_no_larger_than_its_budget(
        budget: str, tiny_model_f16: Path, tiny_imatrix: Path, tiny_table: am.SensitivityTable,
        tmp_path: Path) -> None:
    """Real files: the mix llama.cpp writes holds no more tensor bytes than the budget."""
    parsed = am.Budget.parse(budget)
    base = parsed.stock or "Q4_K_M"
    recipe, _ = allocate_recipe(tiny_model_f16, tiny_table, parsed, base, "test")
    limit = (stock_bytes(tiny_model_f16, base)[0] if parsed.stock
             else am.bpw_bytes(float(budget), tiny_table.n_elements))
    out = tmp_path / "mix.gguf"
    _last(quantize(tiny_model_f16, out, QuantizeOptions(
        base, overrides=recipe.overrides(), imatrix=str(tiny_imatrix))))
    written = gguf.GGUFReader(out)
    data_bytes = sum(int(t.n_bytes) for t in written.tensors)
    assert data_bytes == recipe.bytes  # the size estimate is llama.cpp's to the byte
    assert data_bytes <= limit
    assert data_bytes >= 0.97 * limit  # and the budget is spent, not wasted
    if parsed.stock:
        stock = tmp_path / "stock.gguf"
        _last(quantize(tiny_model_f16, stock, QuantizeOptions(base, imatrix=str(tiny_imatrix))))
        assert data_bytes <= sum(int(t.n_bytes) for t in gguf.GGUFReader(stock).tensors)


# ----------------------------------------------------------------------------- recipes

def test_a_recipe_round_trips_and_llama_cpp_applies_it_as_written(
        tiny_model_f16: Path, tiny_table: am.SensitivityTable, tmp_path: Path) -> None:
    recipe, _ = allocate_recipe(tiny_model_f16, tiny_table, am.Budget(stock="Q3_K_M"),
                                "Q3_K_M", "tiny-Q3_K_M")
    path = rc.save(recipe)
    assert path.parent == rc.recipes_dir() and path in rc.saved()
    loaded = rc.load(path)
    assert loaded == recipe
    assert loaded.overrides() == recipe.overrides()
    assert not list(path.parent.glob("*.tmp*"))  # written atomically: nothing left beside it

    # the loaded recipe's first-match rules are what llama.cpp's quantizer applies
    allocation = am.allocate(tiny_table, stock_bytes(tiny_model_f16, "Q3_K_M")[0])
    dry = dict(estimate_size(tiny_model_f16, QuantizeOptions(
        loaded.base, overrides=loaded.overrides(), allow_requantize=True)).tensor_types)
    assert {n: dry[n] for n in allocation.types} == allocation.types
    widths = [(t.name, t.width) for t in tiny_table.tensors]
    assert loaded.planned_types(widths) == allocation.types
    args = loaded.llama_quantize_args("in.gguf", "out.gguf", "m.gguf")
    assert args[-3:] == ["in.gguf", "out.gguf", "Q3_K_M"]
    assert args.count("--tensor-type") == len(loaded.rules)


def test_a_damaged_recipe_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "name": "x", "base": "Q4_K_M", "rules": '
                   '[{"pattern": "(", "type": "Q4_K"}], "architecture": "llama", '
                   '"n_layers": 2}')
    with pytest.raises(rc.RecipeError, match="damaged"):
        rc.load(bad)
    bad.write_text("not json")
    with pytest.raises(rc.RecipeError, match="cannot be read"):
        rc.load(bad)


# ------------------------------------------------------------------ the proxy vs measured KLD

# The tiny model's weights are i.i.d. Gaussian, so every block tensor is equally hard to
# quantize and a ranking of them would be noise. Three get 1% outliers of different
# strengths (what makes real tensors hard to quantize): the proxy has to find them from the
# weights and the importance matrix alone, and the measurement has to agree.
# All three in layer 0: the proxy cannot see depth (in this model a layer-0 tensor matters
# more than the same tensor in layer 1, outliers or not); the measured gains correct that.
HARD = {"blk.0.attn_v.weight": 16.0, "blk.0.ffn_up.weight": 12.0, "blk.0.ffn_down.weight": 12.0}


def _with_outliers(src: Path, out: Path, hard: dict[str, float]) -> Path:
    rng = np.random.default_rng(1)
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(out), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            values = [bytes(field.parts[i]).decode() if sub == gguf.GGUFValueType.STRING
                      else field.parts[i][0] for i in field.data]
            writer.add_key_value(field.name, values, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(field.name, bytes(field.parts[field.data[0]]).decode(), vtype)
        else:
            writer.add_key_value(field.name, field.parts[field.data[0]][0], vtype)
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if tensor.name in hard:
            weights = data.astype(np.float32)
            weights[rng.random(weights.shape) < 0.01] *= hard[tensor.name]
            data = weights.astype(data.dtype)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.slow
def test_the_proxy_ranks_the_top_tensors_like_measured_kld(tiny_model_f16: Path,
                                                           tmp_path: Path) -> None:
    src = _with_outliers(tiny_model_f16, tmp_path / "tiny-hard.gguf", HARD)
    imatrix = tmp_path / "hard.imatrix.gguf"
    _last(compute(src, TEXT, imatrix, n_ctx=128, max_chunks=8, dataset="test"))
    table = _last(sens.proxy(src, imatrix))
    assert isinstance(table, am.SensitivityTable)
    # "full" on two layers: every tensor is its own group, moved alone from Q8_0 to its probe
    measured = _last(sens.measure(src, table, TEXT, mode="full", imatrix=imatrix,
                                  work_dir=tmp_path, n_ctx=128))
    assert isinstance(measured, am.SensitivityTable)
    assert all(len(m.tensors) == 1 for m in measured.measurements)
    delta = {m.tensors[0]: m.delta for m in measured.measurements}
    assert set(delta) == {t.name for t in table.tensors}
    predicted = {t.name: t.loss(table.probe_type(t)) for t in table.tensors}

    def top(scores: dict[str, float], n: int, blocks_only: bool = False) -> list[str]:
        names = [n_ for n_ in scores if not blocks_only or am.tensor_kind(n_)[0] is not None]
        return sorted(names, key=lambda name: -scores[name])[:n]

    # the token embeddings (no importance matrix entry: the proxy's gain for tensors whose
    # error reaches every token) matter most, measured and predicted
    assert top(predicted, 1) == top(delta, 1) == ["token_embd.weight"]
    # among the block tensors, the top three are the hard ones, predicted and measured
    # (their order within the three is not asked: the probe types differ between them, Q3_K
    # or IQ3_S, whichever quantizes the tensor better at the same 3.44 bits)
    ranks = f"predicted {top(predicted, 5, True)}, measured {top(delta, 5, True)}"
    assert set(top(predicted, 3, blocks_only=True)) == set(HARD), ranks
    assert set(top(delta, 3, blocks_only=True)) == set(HARD), ranks
    print(ranks)
    # and the measured gains make the table predict each measured change (by construction
    # for the groups: this checks with_gains' arithmetic against the measurement)
    for t in measured.tensors:
        if delta[t.name] > 0:
            assert math.isclose(t.loss(measured.probe_type(t)), delta[t.name], rel_tol=1e-6)


# --------------------------------------------------------------------- llama.cpp's fallback

@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows of 288 and 576 values (multiples of 32, not 256), like SmolLM2's 576."""
    return write_tiny_llama(tmp_path_factory.mktemp("narrow") / "narrow-f16.gguf", n_embd=288,
                            n_ff=576, n_head=4, n_head_kv=2, f16=True)


@pytest.mark.parametrize("asked", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ3_S",
                                   "Q4_0", "Q8_0"])
def test_an_unsupported_type_falls_back_as_llama_cpp_does_and_is_counted(
        asked: str, narrow_model: Path) -> None:
    name = "blk.0.ffn_up.weight"
    estimate = estimate_size(narrow_model, QuantizeOptions(
        "Q8_0", overrides=((r"^blk\.0\.ffn_up\.weight$", asked),), allow_requantize=True))
    got = dict(estimate.tensor_types)[name]
    assert got == am.fallback_type(asked, 288)
    if asked in ("Q4_0", "Q8_0"):
        assert got == asked
    else:
        assert got != asked
    # the recipe says what will be stored, and the size estimate counts that type's bytes
    recipe = rc.Recipe("x", "Q8_0", (rc.Rule(r"^blk\.0\.ffn_up\.weight$", asked),), "llama", 2)
    assert recipe.planned_types([(name, 288)]) == {name: got}
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in gguf.GGUFReader(
        narrow_model).tensors}
    types = dict(estimate.tensor_types)
    counted = sum(am.tensor_bytes(shapes[n], types.get(n, "F32")) for n in shapes)
    assert abs(counted - estimate.bytes) <= 0.01 * 2**20  # llama.cpp prints MiB, 2 decimals


def test_rows_no_block_divides_are_stored_as_f16(tmp_path: Path) -> None:
    odd = write_tiny_llama(tmp_path / "odd.gguf", n_embd=80, n_ff=160, n_head=4, n_head_kv=2,
                           f16=True)
    estimate = estimate_size(odd, QuantizeOptions(
        "Q8_0", overrides=((r"^blk\.0\.attn_q\.weight$", "Q4_K"),), allow_requantize=True))
    assert dict(estimate.tensor_types)["blk.0.attn_q.weight"] == "F16" == am.fallback_type(
        "Q4_K", 80)


def test_the_mix_of_a_narrow_model_chooses_only_types_its_rows_take(
        narrow_model: Path, tmp_path: Path) -> None:
    imatrix = tmp_path / "narrow.imatrix.gguf"
    _last(compute(narrow_model, TEXT, imatrix, n_ctx=128, max_chunks=4, dataset="test"))
    table = _last(sens.proxy(narrow_model, imatrix))
    assert isinstance(table, am.SensitivityTable)
    for t in table.tensors:
        assert all(t.width % am.block_size(k) == 0 for k in t.errors)
        assert "Q4_K" not in t.errors and "Q4_0" in t.errors
    # Q4_K_M's own recipe falls back on these rows (Q4_K → Q5_0, Q6_K → Q8_0); its budget is
    # what llama.cpp really writes, and the mix stays within it
    recipe, _ = allocate_recipe(narrow_model, table, am.Budget(stock="Q4_K_M"), "Q4_K_M", "n")
    limit, stock_types = stock_bytes(narrow_model, "Q4_K_M")
    assert "Q4_K" not in stock_types.values()
    assert recipe.bytes <= limit
