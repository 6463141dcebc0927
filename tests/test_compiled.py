"""Decode steps through torch.compile give the eager model's logits: one row, a batch that
started together, ragged rows, rows that finish mid-batch, and an encoder-decoder."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from lmforge.errors import LmforgeError
from lmforge.generate.compiled import compile_decode, decode_forward
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Rows, cache_for, decode_step, generate_ids, prefill
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def tiny(**overrides) -> Transformer:
    config = ModelConfig(**{**dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                                   d_ff=64, max_seq_len=64), **overrides})
    model = Transformer(config)
    model.init_weights(std=0.3, seed=0)
    return model.eval()


def pair(**overrides) -> tuple[Transformer, Transformer]:
    """(eager, compiled): the same weights, the second one's decode steps compiled."""
    eager = tiny(**overrides)
    compiled = copy.deepcopy(eager)
    before = counters["stats"]["unique_graphs"]
    compile_decode(compiled)
    assert counters["stats"]["unique_graphs"] > before  # compiled, not run eagerly
    return eager, compiled


def stepwise_logits(model: Transformer, prompts: list[list[int]], steps: int
                    ) -> list[torch.Tensor]:
    """Logits of every decode step, feeding the same tokens to every model (ids 1, 2, …)."""
    cache = cache_for(model, len(prompts), max(map(len, prompts)), steps + 1)
    slots = [cache.allocate() for _ in prompts]
    for slot, ids in zip(slots, prompts, strict=True):
        prefill(model, cache, slot, ids)
    return [decode_step(model, cache, slots, [1 + (i + r) % 90 for r in range(len(slots))])
            for i in range(steps)]


@pytest.fixture(scope="module")
def decoders() -> tuple[Transformer, Transformer]:
    return pair()


@pytest.mark.parametrize("prompts", [[[5, 6, 7]], [[5, 6, 7], [8, 9, 10]],
                                     [[5, 6, 7], [8], [9, 10, 11, 12, 13]]],
                         ids=["one-row", "batch", "ragged"])
def test_compiled_decode_steps_equal_eager(decoders, prompts):
    eager, compiled = decoders
    assert decode_forward(compiled) is not compiled and decode_forward(eager) is eager
    for a, b in zip(stepwise_logits(eager, prompts, 6), stepwise_logits(compiled, prompts, 6),
                    strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_compiled_generation_with_rows_finishing_mid_batch(decoders):
    eager, compiled = decoders
    prompts = [[3, 4], [5, 6, 7], [8]]
    config = GenerationConfig(max_tokens=6, temperature=0)

    def run(model: Transformer) -> list[list[tuple[int, int]]]:
        # stop on the token the eager model emits first in row 1: rows end at different steps
        return list(generate_ids(model, prompts, config, stop, Rows([None] * 3)))

    stop = []
    stop = [run(eager)[1][1][1]]
    assert run(compiled) == run(eager)


def test_compiled_encoder_decoder_equals_eager():
    eager, compiled = pair(family="encoder_decoder", position="relative", n_encoder_layer=2)
    config = GenerationConfig(max_tokens=5, min_tokens=5, temperature=0)
    before = counters["stats"]["unique_graphs"]
    outs = [list(generate_ids(m, [[5, 6, 7], [9, 10]], config, [], Rows([None] * 2)))
            for m in (eager, compiled)]
    assert outs[0] == outs[1]
    assert counters["stats"]["unique_graphs"] > before  # two rows: a new graph


def test_an_encoder_has_no_decode_step_to_compile():
    with pytest.raises(LmforgeError, match="encoder"):
        compile_decode(tiny(family="encoder", position="learned"), warm_up=False)
