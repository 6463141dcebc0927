"""Invariants of the model and the KV cache on tiny random weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.generate.cache import KVCache
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

CONFIGS = {
    "llama-gqa": dict(n_head=4, n_kv_head=2),
    "mha": dict(n_head=4, n_kv_head=4),
    "mqa-untied": dict(n_head=4, n_kv_head=1, tie_embeddings=False),
    "gpt2-like": dict(n_head=4, norm="layernorm", mlp="gelu", position="learned", bias=True),
    "sinusoidal-geglu": dict(n_head=2, mlp="geglu", position="sinusoidal"),
}


def tiny(**overrides) -> Transformer:
    config = ModelConfig(vocab_size=97, d_model=32, n_layer=2, d_ff=64, max_seq_len=64,
                         **overrides)
    model = Transformer(config)
    model.init_weights(std=0.2, seed=0)
    return model.eval()


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def model(request) -> Transformer:
    return tiny(**CONFIGS[request.param])


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_prefill_plus_decode_equals_full_forward(model):
    x = ids(12, 0)
    full = model(x)
    cache = KVCache(model.config, 2, 32)
    slot = cache.allocate()
    parts = [model(x[:, :5], cache=cache.step([slot], width=5))]
    parts += [model(x[:, t: t + 1], cache=cache.step([slot])) for t in range(5, 9)]
    parts.append(model(x[:, 9:], cache=cache.step([slot], width=3)))  # extend by 3 at once
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_ragged_batch_equals_rows_alone(model):
    """Rows of different lengths decode together, and a row prefilled later joins them."""
    a, b, c = ids(7, 1), ids(3, 2), ids(5, 3)
    cache = KVCache(model.config, 3, 32)
    sa, sb = cache.allocate(), cache.allocate()
    model(a[:, :-1], cache=cache.step([sa], width=6))
    model(b[:, :-1], cache=cache.step([sb], width=2))
    step = model(torch.cat([a[:, -1:], b[:, -1:]]), cache=cache.step([sa, sb]))
    torch.testing.assert_close(step[0, -1], model(a)[0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[1, -1], model(b)[0, -1], atol=1e-5, rtol=0)
    sc = cache.allocate()
    model(c[:, :-1], cache=cache.step([sc], width=4))
    nxt = torch.tensor([[5], [6], [c[0, -1].item()]])
    out = model(nxt, cache=cache.step([sb, sa, sc]))  # out of order: the gather path
    torch.testing.assert_close(out[0, -1], model(torch.cat([b, nxt[:1]], 1))[0, -1],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2, -1], model(c)[0, -1], atol=1e-5, rtol=0)


@torch.inference_mode()
def test_padded_multi_row_prefill(model):
    """Right-padded rows of different lengths prefill in one pass; `keep` picks each last."""
    a, b = ids(6, 4), ids(4, 5)
    cache = KVCache(model.config, 2, 32)
    slots = [cache.allocate(), cache.allocate()]
    batch = torch.cat([a, torch.cat([b, torch.zeros(1, 2, dtype=torch.long)], 1)])
    out = model(batch, cache=cache.step(slots, n_new=[6, 4], width=6),
                keep=torch.tensor([[5], [3]]))
    assert cache.lengths == [6, 4]
    torch.testing.assert_close(out[0, 0], model(a)[0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 0], model(b)[0, -1], atol=1e-5, rtol=0)


@torch.inference_mode()
def test_slots_are_freed_and_reused():
    model = tiny(n_head=4, n_kv_head=2)
    cache = KVCache(model.config, 2, 16)
    s0, s1 = cache.allocate(), cache.allocate()
    with pytest.raises(LmforgeError, match="in use"):
        cache.allocate()
    model(ids(9, 6), cache=cache.step([s0], width=9))
    cache.free(s0)
    assert cache.allocate() == s0 and cache.lengths[s0] == 0
    x = ids(4, 7)
    out = model(x, cache=cache.step([s0], width=4))
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=0)
    with pytest.raises(LmforgeError, match="holds 16 positions"):
        model(ids(13, 8), cache=cache.step([s0], width=13))
    assert s1 == 1


@torch.inference_mode()
def test_truncate_and_copy_reuse_a_prefix():
    model = tiny(n_head=4, n_kv_head=2)
    x = ids(10, 9)
    cache = KVCache(model.config, 2, 16)
    s0, s1 = cache.allocate(), cache.allocate()
    model(x[:, :8], cache=cache.step([s0], width=8))
    cache.copy(s0, s1)
    cache.truncate(s1, 6)  # keep a shared prefix of 6, then diverge
    y = torch.tensor([[1, 2, 3]])
    out = model(y, cache=cache.step([s1], width=3))
    torch.testing.assert_close(out, model(torch.cat([x[:, :6], y], 1))[:, 6:], atol=1e-5,
                               rtol=0)


@torch.inference_mode()
def test_embeds_input_equals_ids(model):
    x = ids(6, 10)
    torch.testing.assert_close(model(embeds=model.embed(x)), model(x))


@torch.inference_mode()
def test_bf16_close_to_fp32():
    model = tiny(n_head=4, n_kv_head=2)
    x = ids(16, 11)
    ref = model(x)
    low = model.to(torch.bfloat16)(x)
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_unknown_config_key_is_named():
    with pytest.raises(LmforgeError, match="n_layers"):
        ModelConfig.from_dict({"vocab_size": 10, "d_model": 8, "n_layers": 2, "n_head": 2})
    with pytest.raises(LmforgeError, match="multiple of n_kv_head"):
        ModelConfig(vocab_size=10, d_model=8, n_layer=1, n_head=3, n_kv_head=2)


def test_config_round_trips_through_json(tmp_path):
    config = ModelConfig(vocab_size=10, d_model=8, n_layer=1, n_head=2, mlp="gelu",
                         norm="layernorm", bias=True, position="learned")
    config.save(tmp_path / "config.json")
    import json

    data = json.loads((tmp_path / "config.json").read_text())
    assert ModelConfig.from_dict(data) == config
    assert config.n_params() == sum(p.numel() for p in Transformer(config).parameters()) > 0


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_equal_f_linear(bias):
    """Our fp32 linear (oneDNN forward and backward) against F.linear, with autograd."""
    import torch.nn.functional as F

    from lmforge.model.linear import linear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen, requires_grad=True)
    w = torch.randn(24, 16, generator=gen, requires_grad=True)
    b = torch.randn(24, generator=gen, requires_grad=True) if bias else None
    g = torch.randn(3, 5, 24, generator=gen)
    params = [p for p in (x, w, b) if p is not None]
    ours = torch.autograd.grad(linear(x, w, b), params, g)
    ref = torch.autograd.grad(F.linear(x, w, b), params, g)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 8, 64])
def test_packed_inference_weights_follow_in_place_changes(rows):
    """After `pack_for_inference`, inference on several rows multiplies by a oneDNN-packed
    copy of the weight: the result equals F.linear, the copy is made again when the weight
    changes in place, and it is freed with the weight (test_surgery.py has the other writes)."""
    import gc
    import weakref

    import torch.nn.functional as F

    from lmforge.model import linear as lin

    layer = lin.Linear(96, 40).eval()
    assert layer.pack_for_inference() == lin.PACKED
    x = torch.randn(rows, 3, 96) if rows > 1 else torch.randn(1, 96)
    with torch.no_grad():
        for scale in (1.0, -2.0):
            layer.weight.mul_(scale)
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias),
                                       atol=1e-5, rtol=1e-5)
    if lin.PACKED:
        pack = weakref.ref(getattr(layer.weight, lin.PACK_ATTR).packed)
        del layer
        gc.collect()
        assert pack() is None


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_blocked_causal_attention_equals_sdpa(dtype, tol):
    """The prefill fast path (chosen by `hardware.gemm_attention_wins`) is causal SDPA with
    grouped K/V heads, over lengths that end inside a block."""
    import torch.nn.functional as F

    from lmforge.model.attention import blocked_causal_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 300, 16, generator=gen).to(dtype) for h in (6, 2, 2))
    ours = blocked_causal_attention(q, k, v, block=128)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                         enable_gqa=True)
    torch.testing.assert_close(ours.float(), ref, atol=tol, rtol=tol)
