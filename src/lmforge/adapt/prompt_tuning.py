"""Prompt tuning: k trained virtual token embeddings in front of every input (Lester et al.,
2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

    h = Transformer([P ; E[x_0] … E[x_{T−1}]])[k:]          P: (k, d_model), trained alone

The model's weights stay frozen; only P (and a task head beside it) trains. Initialisation
(section 2.2 of the paper):

    init=vocab    rows of the embedding table E at random token ids (the default)
    init=labels   the class-label words' embeddings (the mean over each label's tokens),
                  one per label, the remaining rows from the vocabulary as above
    init=normal   N(0, σ²), σ the standard deviation of E's entries (its own scale)

Design choices:
- Positions: the virtual tokens sit at positions 0…k−1 and the text keeps its positions
  0…T−1, as without a prompt (a BERT model's [CLS] stays at position 0, where it was
  pretrained; the causal order is by index, so every text token sees the whole prompt).
  This is also how a decoder's cache holds the prompt: as a P-Tuning v2 prefix
  (`model/prefix.py`), whose tokens count from 0.
- Hidden states: the prompt's own positions are dropped from the output, so pooling (CLS,
  mean, last) and the LM head read the text's positions only.
- Generation (decoders): the prompt's keys and values depend on P alone (causal attention),
  so `prompt_prefix` computes them once, as a frozen `PrefixKV` attached to the model;
  every slot of the KV cache starts with them (`KVCache.write_prefix`), batched rows and the
  server's continuous batching included. Passes without a cache run P through the model.

Saved as an adapter directory (`adapt/adapter.py`) with method "prompt": adapter_config.json
{"n_virtual": k, "init": …} and the tensor "prompt.weight" (k, d_model), plus a head.
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
from lmforge.model.prefix import ATTR as PREFIX_ATTR
from lmforge.model.prefix import PrefixKV
from lmforge.model.transformer import Transformer

ATTR = "soft_prompt"
INITS = ("vocab", "labels", "normal")
TRAINABLE_PATTERNS = (f"{ATTR}.*",)


class SoftPrompt(nn.Module):
    """The virtual token embeddings P, (n_virtual, d_model), and how they were initialised
    (saved with them)."""

    def __init__(self, weight: torch.Tensor, settings: dict | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.settings = dict(settings or {})

    @property
    def n_virtual(self) -> int:
        return self.weight.shape[0]


def init_prompt(model: Transformer, n_virtual: int, init: str = "vocab",
                label_ids: list[list[int]] | None = None, seed: int = 0) -> torch.Tensor:
    """The initial P (n_virtual, d_model), fp32, by `init` (module docstring); `label_ids`:
    each class label's token ids (init=labels)."""
    if n_virtual < 1:
        raise LmforgeError(f"n_virtual={n_virtual}: prompt tuning needs at least one virtual "
                           "token")
    if init not in INITS:
        raise LmforgeError(f"init={init!r}: use one of {', '.join(INITS)}")
    table = model.embed.weight.detach().float().cpu()  # (V, d)
    gen = torch.Generator().manual_seed(seed)
    if init == "normal":
        return torch.randn(n_virtual, table.shape[1], generator=gen) * table.std()
    rows = table[torch.randint(0, table.shape[0], (n_virtual,), generator=gen)]
    if init == "labels":
        if not label_ids or any(not ids for ids in label_ids):
            raise LmforgeError("init=labels needs the class labels as words the tokenizer "
                               "encodes (a task with named labels)")
        labels = torch.stack([table[ids].mean(0) for ids in label_ids])[:n_virtual]
        rows[: len(labels)] = labels
    return rows.clone()


def soft_prompt(model: nn.Module) -> SoftPrompt:
    prompt = getattr(model, ATTR, None)
    if not isinstance(prompt, SoftPrompt):
        raise LmforgeError("this model has no soft prompt; attach_prompt or load a prompt-"
                           "tuning adapter first")
    return prompt


def prompted_hidden(inner, ids: torch.Tensor | None = None, *,
                    embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                    cache=None, keep: torch.Tensor | None = None,
                    token_types: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None,
                    prefix: torch.Tensor | None = None, **rest) -> torch.Tensor:
    """`Transformer.hidden` with the soft prompt in front (module docstring)."""
    model = inner.__self__
    if cache is not None:  # a decoder's cache pass reads the prompt's keys and values
        kv = getattr(model, PREFIX_ATTR, None)
        if kv is None:
            raise LmforgeError(
                f"a prompt-tuned {model.config.family} reads a KV cache through its prompt's "
                "keys and values, which only a decoder has (call prompt_prefix(model) on one)")
        return inner(ids, embeds=embeds, cache=prefixed_store(kv, cache), keep=keep,
                     token_types=token_types, **rest)
    x = model.embed(ids) if embeds is None else embeds
    B, T = x.shape[:2]
    P = soft_prompt(model).weight
    k, dev = P.shape[0], x.device
    x = torch.cat([P.to(x.dtype).expand(B, -1, -1), x], dim=1)  # (B, k + T, d)
    first = torch.arange(k, device=dev).expand(B, k)
    positions = torch.arange(T, device=dev).expand(B, T) if positions is None else positions
    if attention_mask is not None:  # the prompt is always visible
        attention_mask = torch.cat([attention_mask.new_ones(B, k), attention_mask], dim=1)
    if token_types is not None:
        token_types = torch.cat([token_types.new_zeros(B, k), token_types], dim=1)
    if prefix is not None:  # a prefix decoder reads the prompt inside its prefix
        prefix = prefix + k
    # the last block computes only the text's positions (or those `keep` names)
    keep = (torch.arange(k, k + T, device=dev).expand(B, T) if keep is None else keep + k)
    store = NoCache(torch.cat([first, positions], dim=1), model.config.causal, attention_mask,
                    prefix)
    return inner(embeds=x, cache=store, keep=keep, token_types=token_types, **rest)


def attach_prompt(model: Transformer, weight: torch.Tensor, settings: dict | None = None
                  ) -> list[str]:
    """Put the soft prompt `weight` (n_virtual, d_model) in front of every input of `model`
    and freeze everything else; the names of the new (trainable) parameters. `settings`
    (its initialisation) are saved with it."""
    if weight.dim() != 2 or weight.shape[1] != model.config.d_model:
        raise LmforgeError(f"the soft prompt has shape {tuple(weight.shape)}; this model "
                           f"needs (n_virtual, {model.config.d_model})")
    if model.config.family == "encoder_decoder":
        raise LmforgeError("prompt tuning here reads encoders and decoders; this model is an "
                           "encoder-decoder")
    for param in model.parameters():
        param.requires_grad_(False)
    model.add_module(ATTR, SoftPrompt(weight.to(model.device, model.dtype), settings))
    wrap_hidden(model, prompted_hidden)
    return [f"{ATTR}.weight"]


@torch.no_grad()
def prompt_prefix(model: Transformer) -> PrefixKV | None:
    """Compute the soft prompt's keys and values in every layer of a decoder (its tokens see
    only each other, so they are fixed) and attach them as the frozen `PrefixKV` generation
    writes into the KV cache; None (nothing attached) for other families, whose prompt
    tokens also read the text."""
    if model.config.family != "decoder":
        return None
    P = soft_prompt(model).weight
    recorder = Recorder(P.shape[0], P.device)
    was_training = model.training
    model.eval()
    type(model).hidden(model, embeds=P[None].to(model.dtype), cache=recorder)
    model.train(was_training)
    k = torch.stack([k for k, _ in recorder.kv])  # (n_layer, nkv, n, hd)
    v = torch.stack([v for _, v in recorder.kv])
    prefix = frozen_kv(model.config, k, v)
    model.add_module(PREFIX_ATTR, prefix)
    return prefix


class Recorder(NoCache):
    """A causal pass over the prompt alone that keeps every layer's keys and values."""

    def __init__(self, n: int, device: torch.device) -> None:
        super().__init__(torch.arange(n, device=device)[None], True)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.kv.append((k[0], v[0]))
        return k, v


def remove_prompt(model: Transformer) -> None:
    """Take the soft prompt (and its keys and values) off `model`."""
    unwrap_hidden(model)
    for name in (ATTR, PREFIX_ATTR):
        if hasattr(model, name):
            delattr(model, name)


def export(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    prompt = soft_prompt(model)
    head_config, head = export_head(model)
    config = {"n_virtual": prompt.n_virtual, "d_model": prompt.weight.shape[1],
              **prompt.settings, **head_config}
    return config, {"prompt.weight": prompt.weight.detach().float().cpu(), **head}


def apply(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    if "prompt.weight" not in tensors:
        raise LmforgeError("this prompt-tuning adapter has no prompt.weight tensor")
    attach_prompt(model, tensors["prompt.weight"].float(),
                  {k: config[k] for k in ("init",) if k in config})
    prompt_prefix(model)
    apply_head(model, config, tensors)
    model.eval()


register_method(AdapterMethod("prompt", export, apply))
