"""Invariants of every family, from one configurable implementation: cached = uncached,
save → load round trip, seed reproducibility; and the BatchNorm/LayerNorm comparison."""

from __future__ import annotations

import pytest
import torch

from lmforge.api import build_model
from lmforge.generate.cache import KVCache
from lmforge.generate.engine import prefill
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

FAMILIES = {
    "decoder": dict(family="decoder"),
    "prefix": dict(family="prefix"),
    "encoder": dict(family="encoder", norm="layernorm", mlp="gelu", position="learned",
                    norm_position="post", bias=True),
    "encoder_decoder": dict(family="encoder_decoder", position="relative", mlp="geglu_tanh",
                            n_encoder_layer=3, relative_buckets=8, relative_max_distance=16),
}


def make(family: str, seed: int = 0) -> Transformer:
    config = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                         max_seq_len=64, **FAMILIES[family])
    model = Transformer(config)
    model.init_weights(seed=seed)
    return model.eval()


def run(model: Transformer, ids: torch.Tensor, **kw) -> torch.Tensor:
    """A full uncached pass (encoder-decoder: decoding `ids` against a fixed source)."""
    if model.config.family == "encoder_decoder":
        kw["memory"] = model.encode(torch.arange(3, 13).expand(ids.shape[0], -1))
    return model(ids, **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_seed_reproducibility(family):
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    a, b, c = make(family, 1), make(family, 1), make(family, 2)
    with torch.inference_mode():
        assert torch.equal(run(a, ids), run(b, ids))
        assert not torch.allclose(run(a, ids), run(c, ids))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_round_trip(family, tmp_path):
    model = make(family)
    save_checkpoint(tmp_path, model.config, model.state_dict(), None)
    config, state_dict, _, _ = load_weights(tmp_path)
    assert config == model.config
    loaded = build_model(config, state_dict)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(run(model, ids), run(loaded, ids))


@pytest.mark.parametrize("family", ["decoder", "prefix", "encoder_decoder"])
def test_cached_generation_equals_uncached(family):
    """Prefill a prompt, then decode token by token through the KV cache; each step's logits
    equal an uncached pass over the whole sequence (a prefix decoder's prompt is its
    prefix, read both ways in both paths)."""
    model = make(family)
    seq = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(3))
    n_prompt = 5
    memory = None
    if family == "encoder_decoder":
        memory = model.cross_memory(model.encode(torch.arange(3, 13)[None]))
    cache = KVCache(model.config, 1, 16)
    slot = cache.allocate()
    with torch.inference_mode():
        cached = [prefill(model, cache, slot, seq[0, :n_prompt].tolist(), memory)]
        for t in range(n_prompt, seq.shape[1]):
            cached.append(model(seq[:, t: t + 1], cache=cache.step([slot]), memory=memory)[0, -1])
        kw = {"prefix": torch.tensor([n_prompt])} if family == "prefix" else {}
        full = run(model, seq, **kw)[0, n_prompt - 1:]
    torch.testing.assert_close(torch.stack(cached), full, rtol=1e-5, atol=1e-5)


def test_encoder_output_of_a_row_is_independent_of_its_batch():
    model = make("encoder")
    gen = torch.Generator().manual_seed(0)
    row, other = torch.randint(0, 64, (1, 10), generator=gen), torch.randint(0, 64, (3, 10),
                                                                            generator=gen)
    with torch.inference_mode():
        alone = model.hidden(row)
        batched = model.hidden(torch.cat([row, other]))[:1]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm,depends", [("batchnorm", True), ("layernorm", False)])
def test_batchnorm_couples_a_sequence_to_its_batch(norm, depends):
    """The textbook's argument for LayerNorm: in training, BatchNorm normalises each channel
    over every token of the batch, so one sequence's output changes when the other
    sequences change; LayerNorm normalises each token by itself."""
    config = ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, norm=norm)
    model = Transformer(config)
    model.init_weights(seed=0)
    model.train()
    gen = torch.Generator().manual_seed(0)
    row = torch.randint(0, 64, (1, 8), generator=gen)
    companions = [torch.randint(0, 64, (3, 8), generator=gen) for _ in range(2)]
    with torch.no_grad():
        outs = [model(torch.cat([row, c]))[0] for c in companions]
    assert ((outs[0] - outs[1]).abs().max().item() > 1e-3) is depends
