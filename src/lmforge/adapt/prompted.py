"""What prompt tuning and P-Tuning v2 share: every pass of the model reads the adapter, and
a classification head trained with it travels in the same adapter directory.

Design choices:
- The seam is `Transformer.hidden`, which every pass goes through (`forward`, pooling for
  classification, scoring, generation). `wrap_hidden` replaces it on the one model
  instance by a function that adds the adapter's inputs and calls the original, so the
  Transformer file knows nothing of either method and `unwrap_hidden` gives the plain
  model back.
- Passes over a KV cache read the adapter as keys and values in front of every layer's (a
  `PrefixKV`, `model/prefix.py`): generation writes them once into each slot
  (`KVCache.write_prefix`, through `model.prefix.attached_prefix`), and a cache pass whose
  slots do not hold them yet (scoring, beam search) is wrapped in a `PrefixStore`, which
  gives the same attention.
- A head (sequence classification) trained beside the adapter is saved with it, under
  "classifier.*" tensors and a "classifier" config section (`adapt/classifier.py`'s
  settings), so `lmforge.load(spec, adapter=DIR)` gives a model `classify` reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.generate.cache import CacheStep
from lmforge.model.attention import KVStore
from lmforge.model.prefix import PrefixKV, PrefixStore

HEAD = "classifier"

Hidden = Callable[..., torch.Tensor]


def wrap_hidden(model: nn.Module, around: Callable[..., torch.Tensor]) -> None:
    """Make `model.hidden(…)` call `around(inner, …)`, inner being the model's own hidden."""
    if "hidden" in vars(model):
        raise LmforgeError("this model already carries a prompt-tuning or P-Tuning v2 "
                           "adapter; load the base again to put another one on it")
    model.hidden = functools.partial(around, model.hidden)


def unwrap_hidden(model: nn.Module) -> None:
    if "hidden" in vars(model):
        del model.hidden


def prefixed_store(prefix: PrefixKV, cache: KVStore) -> KVStore:
    """`cache` with `prefix` in front: as it is when its slots already hold the prefix
    (written by generation), else wrapped in a `PrefixStore`."""
    if isinstance(cache, PrefixStore):
        return cache
    held = cache.prefix_len if isinstance(cache, CacheStep) else [0]
    if all(held):
        return cache
    if any(held):
        raise LmforgeError("a batch mixes KV-cache slots that hold the adapter's prefix with "
                           "slots that do not; write it into every slot (Batch.prefill)")
    return prefix.store(cache)


def frozen_kv(config, k: torch.Tensor, v: torch.Tensor) -> PrefixKV:
    """A plain `PrefixKV` holding the given K, V (n_layer, n_kv_head, n_prefix, head_dim),
    frozen."""
    prefix = PrefixKV(config, k.shape[2])
    with torch.no_grad():
        prefix.k = nn.Parameter(k.detach().clone(), requires_grad=False)
        prefix.v = nn.Parameter(v.detach().clone(), requires_grad=False)
    return prefix


def export_head(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The classification head on `model`, if any, as ({"classifier": settings}, tensors)."""
    if getattr(model, HEAD, None) is None:
        return {}, {}
    from lmforge.adapt.classifier import export

    settings, tensors = export(model)
    return {HEAD: settings}, {f"{HEAD}.{k}": v for k, v in tensors.items()}


def apply_head(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Attach the head an adapter carries (none when its config has no "classifier")."""
    if HEAD not in config:
        return
    from lmforge.adapt.classifier import apply

    head = {k.removeprefix(f"{HEAD}."): v for k, v in tensors.items()
            if k.startswith(f"{HEAD}.")}
    apply(model, config[HEAD], head)
