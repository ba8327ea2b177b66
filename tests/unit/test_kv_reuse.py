"""When the engine keeps a cached prefix and when it decodes a prompt whole (app.core.kv_reuse).
The cases are the ones measured on SmolLM2 Q4_K_M (its shape below), 2 threads."""

from __future__ import annotations

from app.core.kv_reuse import attended_cells, worth_keeping

SMOLLM2 = {"n_params": 134_515_008, "n_embd": 576, "n_layer": 30, "n_ubatch": 512}
LLAMA_7B = {"n_params": 6_738_415_616, "n_embd": 4096, "n_layer": 32, "n_ubatch": 512}


def test_each_micro_batch_attends_to_the_cells_up_to_its_end_rounded_up_to_256() -> None:
    assert attended_cells(0, 777, 512) == 512 * 512 + 265 * 1024
    # four cached tokens move both micro-batches' ends: the first now attends to 768 cells
    assert attended_cells(4, 777, 512) == 512 * 768 + 261 * 1024
    assert attended_cells(2679, 2701, 512) == 22 * 2816


def test_a_few_shared_opening_tokens_before_a_long_prompt_are_not_kept() -> None:
    # measured: 6 kept of 777, 1,877 ms to the first token; decoded whole, 1,693 ms
    assert not worth_keeping(6, 777, **SMOLLM2)
    assert not worth_keeping(4, 777, **SMOLLM2)


def test_a_longer_shared_prefix_is_kept() -> None:
    # measured: 120 kept of 885, 1,780 ms; decoded whole, 1,943 ms (break-even near 60 of 820)
    assert worth_keeping(120, 885, **SMOLLM2)


def test_a_conversations_next_turn_and_a_short_prompt_keep_their_cache() -> None:
    assert worth_keeping(2679, 2701, **SMOLLM2)  # turn 5 of bench/multiturn.py
    assert worth_keeping(4, 120, **SMOLLM2)  # one micro-batch, in the same 256 cells either way
    assert not worth_keeping(0, 120, **SMOLLM2)


def test_a_large_models_weights_make_a_few_tokens_worth_keeping_sooner() -> None:
    assert worth_keeping(30, 2000, **LLAMA_7B)
    assert not worth_keeping(30, 2000, **SMOLLM2)
