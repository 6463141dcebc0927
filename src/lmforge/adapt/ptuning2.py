"""P-Tuning v2 as an adapter: trained keys and values in front of every layer's (Liu et al.,
2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally Across Scales
and Tasks"); the prefix itself, its store and its place in the KV cache are
`model/prefix.py`.

    head_l(x) = softmax(Q_l · [P_lᴷ ; K_l]ᵀ / √d_head + M) · [P_lⱽ ; V_l]

The model stays frozen; P (and a task head) train. With `reparam` (= h > 0) P is produced
during training by the two-layer MLP of P-Tuning v2's PrefixEncoder from a trained
embedding E (n_prefix, d_model):

    [Pᴷ ; Pⱽ] = W₂ · tanh(W₁ · E + b₁) + b₂

`fold_prefix` evaluates it once and keeps only the result, so a saved adapter holds the
per-layer K/V alone (the MLP is a training device: the paper reports it helps on some
tasks and not others, and it costs nothing at inference once folded).

Every pass of the model reads the prefix (`adapt/prompted.py`): a pass without a cache
through a `PrefixStore` over its own store, a pass over a KV cache from the slots
generation wrote it into (batched rows and the server's continuous batching alike).

Saved as an adapter directory (`adapt/adapter.py`) with method "ptuning2":
adapter_config.json {"n_prefix": n, "reparam": h, …} and the tensors "prefix.k" and
"prefix.v", each (n_layer, n_kv_head, n_prefix, head_dim), plus a head.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.adapt.adapter import AdapterMethod, register_method
from lmforge.adapt.prompted import (
    apply_head,
    export_head,
    frozen_kv,
    prefixed_store,
    unwrap_hidden,
    wrap_hidden,
)
from lmforge.errors import LmforgeError
from lmforge.model.masks import NoCache
from lmforge.model.prefix import ATTR, PrefixKV, attached_prefix
from lmforge.model.transformer import Transformer

TRAINABLE_PATTERNS = (f"{ATTR}.*",)


def prefix_of(model: nn.Module) -> PrefixKV:
    prefix = attached_prefix(model)
    if prefix is None:
        raise LmforgeError("this model has no P-Tuning v2 prefix; attach_ptuning or load a "
                           "ptuning2 adapter first")
    return prefix


def ptuned_hidden(inner, ids: torch.Tensor | None = None, *,
                  embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                  cache=None, attention_mask: torch.Tensor | None = None,
                  prefix: torch.Tensor | None = None, **rest) -> torch.Tensor:
    """`Transformer.hidden` with the prefix in front of every layer's keys and values."""
    model = inner.__self__
    kv = prefix_of(model)
    if cache is None:
        inputs = ids if embeds is None else embeds
        B, T = inputs.shape[:2]
        causal = model.config.causal
        store = NoCache.start(B, T, causal, attention_mask, prefix, inputs.device) \
            if positions is None else NoCache(positions, causal, attention_mask, prefix)
        return inner(ids, embeds=embeds, cache=kv.store(store), **rest)
    return inner(ids, embeds=embeds, cache=prefixed_store(kv, cache), positions=positions,
                 attention_mask=attention_mask, prefix=prefix, **rest)


def attach_ptuning(model: Transformer, n_prefix: int, reparam: int = 0, std: float = 1.0,
                   seed: int = 0) -> list[str]:
    """Put a new prefix of `n_prefix` positions in front of every layer of `model`
    (reparameterised by an MLP of `reparam` hidden units when > 0; plain K/V drawn from
    N(0, std²) otherwise) and freeze everything else; the names of the trainable
    parameters."""
    if reparam < 0:
        raise LmforgeError(f"reparam={reparam}: 0 (off) or the MLP's hidden width")
    with torch.random.fork_rng(devices=[]):  # the MLP's layers draw from the global RNG
        torch.manual_seed(seed)
        prefix = PrefixKV(model.config, n_prefix, hidden=reparam or None, std=std, seed=seed)
    return attach_prefix(model, prefix)


def attach_prefix(model: Transformer, prefix: PrefixKV) -> list[str]:
    """Put `prefix` on `model` (every pass reads it) and freeze everything else but it."""
    if model.config.family == "encoder_decoder":
        raise LmforgeError("P-Tuning v2 here reads encoders and decoders; this model is an "
                           "encoder-decoder")
    for param in model.parameters():
        param.requires_grad_(False)
    model.add_module(ATTR, prefix.to(model.device))
    wrap_hidden(model, ptuned_hidden)
    return [f"{ATTR}.{n}" for n, p in prefix.named_parameters() if p.requires_grad]


@torch.no_grad()
def fold_prefix(model: Transformer) -> PrefixKV:
    """Replace a reparameterised prefix by the K/V its MLP gives (the same outputs, no MLP);
    a plain prefix stays as it is."""
    prefix = prefix_of(model)
    if prefix.mlp is None:
        return prefix
    k, v = prefix.tensors()
    folded = frozen_kv(model.config, k.float(), v.float()).to(model.device)
    model.add_module(ATTR, folded)
    return folded


def remove_ptuning(model: Transformer) -> None:
    """Take the prefix off `model`."""
    unwrap_hidden(model)
    if hasattr(model, ATTR):
        delattr(model, ATTR)


def export(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    prefix = prefix_of(model)
    reparam = prefix.mlp[0].out_features if prefix.mlp is not None else 0
    with torch.no_grad():
        k, v = prefix.tensors()  # folded: the MLP's output, once
    head_config, head = export_head(model)
    n_layer, n_kv_head, n_prefix, head_dim = prefix.shape
    config = {"n_prefix": n_prefix, "n_layer": n_layer, "n_kv_head": n_kv_head,
              "head_dim": head_dim, "reparam": reparam, **head_config}
    return config, {"prefix.k": k.detach().float().cpu().contiguous(),
                    "prefix.v": v.detach().float().cpu().contiguous(), **head}


def apply(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    k, v = tensors.get("prefix.k"), tensors.get("prefix.v")
    if k is None or v is None:
        raise LmforgeError("this P-Tuning v2 adapter lacks prefix.k or prefix.v")
    c = model.config
    want = (c.n_layer, c.n_kv_head, c.head_dim)
    if (k.shape[0], k.shape[1], k.shape[3]) != want or k.shape != v.shape:
        raise LmforgeError(f"the adapter's prefix has shape {tuple(k.shape)} but this model "
                           f"needs (n_layer, n_kv_head, n_prefix, head_dim) with {want}: it "
                           "was trained for another model")
    attach_prefix(model, frozen_kv(c, k.to(model.dtype), v.to(model.dtype)))
    apply_head(model, config, tensors)
    model.eval()


register_method(AdapterMethod("ptuning2", export, apply))
