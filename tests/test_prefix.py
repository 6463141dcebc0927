"""P-Tuning v2 prefix keys and values (`model/prefix.py`) and the `KVStore` protocol every
store implements: a prefixed pass equals attention computed by hand, trains the prefix
alone, ignores padding, and generates through the KV cache (`KVCache.write_prefix`) with
the same logits as the pass without a cache."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.generate.cache import CacheStep, KVCache
from lmforge.model.attention import KVStore
from lmforge.model.config import ModelConfig
from lmforge.model.masks import BiasedStore, NoCache
from lmforge.model.position import apply_rope
from lmforge.model.prefix import PrefixKV, PrefixStore
from lmforge.model.transformer import Transformer

V = 61
CONFIGS = {
    "rope-gqa": dict(n_head=4, n_kv_head=2),
    "learned": dict(n_head=4, norm="layernorm", mlp="gelu", position="learned", bias=True),
    "encoder": dict(family="encoder", n_head=4, norm="layernorm", mlp="gelu",
                    position="learned", norm_position="post", bias=True),
    "prefix-lm": dict(family="prefix", n_head=4, n_kv_head=2),
    "t5": dict(family="encoder_decoder", n_head=4, n_kv_head=2, position="relative",
               mlp="geglu_tanh", n_encoder_layer=2, relative_buckets=8,
               relative_max_distance=16),
}
SOURCE = torch.arange(3, 11)[None]  # the encoder-decoder's source


def tiny(name: str) -> Transformer:
    config = ModelConfig(vocab_size=V, d_model=32, n_layer=2, d_ff=64, max_seq_len=48,
                         **CONFIGS[name])
    model = Transformer(config)
    model.init_weights(std=0.2, seed=0)
    return model.eval()


def ids(n: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, n), generator=torch.Generator().manual_seed(seed))


def memory_of(model: Transformer, rows: int):
    if model.config.family != "encoder_decoder":
        return None
    return model.cross_memory(model.encode(SOURCE.expand(rows, -1)))


def hand_attention(attn, pk: torch.Tensor, pv: torch.Tensor, causal: bool,
                   attention_mask: torch.Tensor | None):
    """A layer's attention written out: [prefix; keys], explicit masks, softmax by hand."""

    def forward(x, rope, store):
        B, T, _ = x.shape
        nh, nkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
        q, k, v = attn.qkv(x).view(B, T, nh + 2 * nkv, hd).transpose(1, 2).split(
            [nh, nkv, nkv], dim=1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        P = pk.shape[1]
        k = torch.cat([pk.expand(B, -1, -1, -1), k], 2).repeat_interleave(nh // nkv, 1)
        v = torch.cat([pv.expand(B, -1, -1, -1), v], 2).repeat_interleave(nh // nkv, 1)
        visible = torch.ones(B, T, P + T, dtype=torch.bool)
        if causal:
            visible[:, :, P:] = torch.ones(T, T, dtype=torch.bool).tril()
        if attention_mask is not None:
            visible[:, :, P:] &= attention_mask.bool()[:, None, :]
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        probs = scores.masked_fill(~visible[:, None], float("-inf")).softmax(-1)
        return attn.out((probs @ v).transpose(1, 2).reshape(B, T, nh * hd))

    return forward


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "full"])
@pytest.mark.parametrize("name", ["rope-gqa", "learned", "encoder"])
def test_prefixed_pass_equals_attention_by_hand(name, padded):
    model = tiny(name)
    prefix = PrefixKV(model.config, 3, seed=1)
    x = ids(7, 2, batch=2)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3]) if padded else None
    with torch.no_grad():
        got = model(x, cache=prefix.store_for(x, mask))
        k, v = prefix.tensors()
        for i, block in enumerate(model.layers):
            block.attn.forward = hand_attention(block.attn, k[i], v[i], model.config.causal,
                                                mask)
        want = model(x)
    real = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["rope-gqa", "encoder"])
def test_the_prefix_changes_every_position(name):
    model = tiny(name)
    x = ids(6, 3)
    with torch.no_grad():
        plain = model(x)
        prefixed = model(x, cache=PrefixKV(model.config, 2, seed=4).store_for(x))
    assert ((prefixed - plain).abs().amax(-1) > 1e-3).all()


@pytest.mark.parametrize("hidden", [None, 16], ids=["plain", "reparameterised"])
@pytest.mark.parametrize("name", ["rope-gqa", "encoder"])
def test_training_reaches_the_prefix_only(name, hidden):
    model = tiny(name).train()
    model.requires_grad_(False)
    prefix = PrefixKV(model.config, 4, hidden=hidden, seed=2)
    x = ids(9, 5, batch=2)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    logits = model(x, cache=prefix.store_for(x, mask))
    loss = torch.nn.functional.cross_entropy(logits[mask.bool()], x[mask.bool()])
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    grads = [p.grad for p in prefix.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["rope-gqa", "learned", "encoder", "prefix-lm", "t5"])
def test_padded_rows_equal_rows_alone(name):
    """Logits and the prefix's gradient of a right-padded batch equal those of its rows
    computed alone."""
    model = tiny(name)
    model.requires_grad_(False)
    prefix = PrefixKV(model.config, 3, seed=3)
    a, b = ids(8, 6), ids(5, 7)
    batch = torch.cat([a, torch.cat([b, torch.zeros(1, 3, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    lm_prefix = {"prefix": torch.tensor([3, 2])} if name == "prefix-lm" else {}

    def run(x, m, **kw):
        store = prefix.store_for(x, m, **kw)
        return model(x, cache=store, memory=memory_of(model, x.shape[0]))

    prefix.zero_grad()
    both = run(batch, mask, **lm_prefix)
    both[mask.bool()].square().sum().backward()
    grad_both = prefix.k.grad.clone()
    prefix.zero_grad()
    singles = [run(a, None, **{k: t[:1] for k, t in lm_prefix.items()}),
               run(b, None, **{k: t[1:] for k, t in lm_prefix.items()})]
    sum(s.square().sum() for s in singles).backward()
    torch.testing.assert_close(both[0], singles[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1, :5], singles[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_both, prefix.k.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["rope-gqa", "learned", "prefix-lm", "t5"])
def test_generation_through_the_cache_equals_the_prefixed_pass(name):
    """write_prefix + prefill + batched decode steps of two rows of different lengths give
    the logits of the pass without a cache; a freed slot taken again without a prefix
    behaves like a plain slot."""
    model = tiny(name)
    prefix = PrefixKV(model.config, 3, seed=5)
    lm = name == "prefix-lm"
    seqs = [ids(11, 8)[0].tolist(), ids(9, 9)[0].tolist()]
    prompts = [6, 3]
    cache = KVCache(model.config, 3, 24)
    slots = [cache.allocate(), cache.allocate()]
    memory = memory_of(model, 2)
    with torch.inference_mode():
        for slot, seq, n in zip(slots, seqs, prompts, strict=True):
            cache.write_prefix(slot, prefix)
            assert cache.lengths[slot] == cache.prefix_len[slot] == 3
            step = cache.step([slot], width=n, bidirectional=lm)
            assert step.positions.tolist() == [list(range(n))]  # tokens count from 0
            model(torch.tensor([seq[:n]]), cache=step, memory=memory_of(model, 1))
        got = [[], []]
        for t in range(5):
            tokens = torch.tensor([[seq[n + t]] for seq, n in zip(seqs, prompts, strict=True)])
            out = model(tokens, cache=cache.step(slots), memory=memory)[:, -1]
            for r in range(2):
                got[r].append(out[r])
        for r, (seq, n) in enumerate(zip(seqs, prompts, strict=True)):
            x = torch.tensor([seq[: n + 5]])
            kw = {"prefix": torch.tensor([n])} if lm else {}
            want = model(x, cache=prefix.store_for(x, **kw), memory=memory_of(model, 1))
            torch.testing.assert_close(torch.stack(got[r]), want[0, n: n + 5], atol=1e-5,
                                       rtol=0)
        cache.free(slots[1])
        plain = cache.allocate()
        assert plain == slots[1] and cache.lengths[plain] == cache.prefix_len[plain] == 0
        seq = seqs[1]
        model(torch.tensor([seq[:4]]), cache=cache.step([plain], width=4, bidirectional=lm),
              memory=memory_of(model, 1))
        out = model(torch.tensor([[seq[4]], [seqs[0][11 - 1]]]),
                    cache=cache.step([plain, slots[0]]), memory=memory)
        kw = {"prefix": torch.tensor([4])} if lm else {}
        want = model(torch.tensor([seq[:5]]), memory=memory_of(model, 1), **kw)
        torch.testing.assert_close(out[0, -1], want[0, -1], atol=1e-5, rtol=0)


def test_padded_multi_row_prefill_after_a_prefix():
    """Two prefixed rows prefilled in one right-padded pass (ragged, explicit mask)."""
    model = tiny("rope-gqa")
    prefix = PrefixKV(model.config, 2, seed=6)
    a, b = ids(6, 10), ids(4, 11)
    cache = KVCache(model.config, 2, 16)
    slots = [cache.allocate(), cache.allocate()]
    for slot in slots:
        cache.write_prefix(slot, prefix)
    batch = torch.cat([a, torch.cat([b, torch.zeros(1, 2, dtype=torch.long)], 1)])
    with torch.inference_mode():
        out = model(batch, cache=cache.step(slots, n_new=[6, 4], width=6),
                    keep=torch.tensor([[5], [3]]))
        for row, x in enumerate([a, b]):
            want = model(x, cache=prefix.store_for(x))[0, -1]
            torch.testing.assert_close(out[row, 0], want, atol=1e-5, rtol=0)


def test_cache_copy_and_reorder_keep_the_prefix_length():
    model = tiny("rope-gqa")
    cache = KVCache(model.config, 3, 16)
    a, b = cache.allocate(), cache.allocate()
    cache.write_prefix(a, PrefixKV(model.config, 2, seed=0))
    cache.copy(a, b)
    assert cache.prefix_len[b] == 2
    c = cache.allocate()
    cache.reorder([b, c], [1, 0])
    assert cache.prefix_len[b] == 0 and cache.prefix_len[c] == 2


def test_write_prefix_errors():
    model = tiny("rope-gqa")
    cache = KVCache(model.config, 2, 8)
    slot = cache.allocate()
    with pytest.raises(LmforgeError, match="another model"):
        cache.write_prefix(slot, PrefixKV(tiny("learned").config, 2))
    with pytest.raises(LmforgeError, match="larger cache"):
        cache.write_prefix(slot, PrefixKV(model.config, 8))
    cache.write_prefix(slot, PrefixKV(model.config, 2))
    with pytest.raises(LmforgeError, match="just allocated"):
        cache.write_prefix(slot, PrefixKV(model.config, 2))
    with pytest.raises(LmforgeError, match="at least one"):
        PrefixKV(model.config, 0)


# --- the protocol: every store declares every attribute, consistently -----------------

def make_store(kind: str) -> tuple[KVStore, int]:
    """A store over B=2 rows of T=3 new tokens, and the key count it should declare."""
    config = tiny("rope-gqa").config
    if kind == "NoCache":
        return NoCache.start(2, 3, True, torch.tensor([[1, 1, 1], [1, 1, 0]])), 3
    if kind == "BiasedStore":
        inner = NoCache.start(2, 3, True)
        return BiasedStore(inner, torch.zeros(1, 4, 3, 3)), 3
    if kind == "CacheStep":
        cache = KVCache(config, 2, 16)
        a, b = cache.allocate(), cache.allocate()
        cache.write_prefix(a, PrefixKV(config, 2))
        cache.step([a, b], n_new=[2, 2], width=2)
        return cache.step([a, b], n_new=[3, 2], width=3), 7
    return PrefixKV(config, 4).store(NoCache.start(2, 3, False)), 7


STORES = {cls.__name__: cls for cls in (NoCache, BiasedStore, CacheStep, PrefixStore)}


@pytest.mark.parametrize("kind", list(STORES))
def test_every_store_implements_the_protocol(kind):
    store, L = make_store(kind)
    assert type(store) is STORES[kind] and KVStore in type(store).__mro__  # declared
    for name in KVStore.__annotations__:
        assert hasattr(store, name), name
    assert store.positions.shape == (2, 3) and store.positions.dtype == torch.long
    assert store.length == L and store.key_positions.shape[-1] == L
    assert store.key_positions.shape[0] in (1, 2) and isinstance(store.causal, bool)
    if store.mask is not None:
        assert store.mask.shape[-2:] in ((3, L), (1, L)) and store.mask.dim() == 4
    k, v = store.update(1, torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8))
    assert k.shape == v.shape == (2, 2, L, 8)


def test_prefixed_cache_positions_start_at_zero():
    """RoPE positions of the tokens after a prefix count from 0; the prefix keys sit
    before 0 (what a relative bias reads), in the cache and in a pass without one."""
    store, _ = make_store("CacheStep")
    assert store.positions.tolist() == [[2, 3, 4], [2, 3, 4]]
    assert store.key_positions.tolist() == [[-2, -1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]]
    prefixed, _ = make_store("PrefixStore")
    assert prefixed.positions.tolist() == [[0, 1, 2]] * 2
    assert prefixed.key_positions.tolist() == [[-4, -3, -2, -1, 0, 1, 2]] * 2
