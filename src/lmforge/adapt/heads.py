"""Sequence classification on a Transformer: pooling, the classifier head, its loss, the
hidden states of every layer, and the `seqcls` training objective.

Pooling turns hidden states (B, T, d) and the attention mask m (B, T) into one vector u per
row:

    cls    u = h_0                              BERT's [CLS] (Devlin et al., 2019); encoders
    mean   u = Σ_t m_t·h_t / Σ_t m_t             Sentence-BERT (Reimers & Gurevych, 2019)
    last   u = h_{L−1}, L = Σ_t m_t              the last real token: the only position of a
                                                 causal model that has read the whole text
                                                 (GPT-2/Llama sequence classification)

The head is linear, logits = W·u + b, or has one hidden layer, logits = W₂·tanh(W₁·u + b₁)
+ b₂ (RoBERTa's classification head, Liu et al., 2019). The loss is the cross-entropy
L = −(1/B) Σ_i log softmax(logits_i)[y_i].

Per-layer states come from forward hooks on the blocks, so the model code knows nothing of
probing: layer 0 is the input of the first block (the embeddings), layer k the output of
block k, and layer n_layer the final hidden states (`Transformer.hidden`, after the final
norm of a pre-norm model).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data import batches
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.heads import cls_pool, mean_pool
from lmforge.model.transformer import Transformer
from lmforge.objectives.registry import Losses, Objective, SamplerInputs

POOLINGS = ("cls", "mean", "last")
FAMILIES = ("encoder", "decoder", "prefix")


def last_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) and (B, T) of 1/0 (right padding) → (B, d): each row's last real token, fp32."""
    last = attention_mask.long().sum(dim=1).clamp(min=1) - 1  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One fp32 vector (B, d) per row by `pooling` (cls, mean or last)."""
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "cls":
        return cls_pool(hidden)
    return last_pool(hidden, attention_mask)


def check_pooling(pooling: str, config: ModelConfig) -> str:
    """The pooling to use for `config` ("": the model's natural one: mean for encoders,
    last for causal models); an error for a pooling the model cannot use."""
    if config.family not in FAMILIES:
        raise LmforgeError(f"sequence classification reads an encoder or a decoder; this model "
                           f"is a {config.family}")
    if not pooling:
        return "last" if config.causal else "mean"
    if pooling not in POOLINGS:
        raise LmforgeError(f"pooling={pooling!r}: use one of {', '.join(POOLINGS)}")
    if pooling == "cls" and config.causal:
        raise LmforgeError("pooling=cls reads the first token, which a causal model computes "
                           "before it has seen the text; use last or mean")
    return pooling


class ClassifierHead(nn.Module):
    """u (…, d) → logits (…, n_classes): linear, or one tanh hidden layer of `hidden` units."""

    def __init__(self, d_in: int, n_classes: int, hidden: int = 0, dropout: float = 0.0
                 ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(d_in, hidden) if hidden else None
        self.out = nn.Linear(hidden or d_in, n_classes)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = self.dropout(u)
        if self.dense is not None:
            u = self.dropout(torch.tanh(self.dense(u)))
        return self.out(u)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy −(1/B) Σ_i log softmax(logits_i)[y_i], in fp32."""
    return F.cross_entropy(logits.float(), labels)


def layer_range(model: Transformer) -> range:
    """The layers whose states `hidden_states` gives: 0 (embeddings) … n_layer (final)."""
    return range(len(model.layers) + 1)


@contextmanager
def capture(model: Transformer, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Hooks that fill {layer: states (B, T, d)} for the layers 0 … n_layer − 1 asked for
    during the forward passes inside the block (layer n_layer is `hidden`'s own output)."""
    out: dict[int, torch.Tensor] = {}
    handles = []
    if 0 in layers:
        handles.append(model.layers[0].register_forward_pre_hook(
            lambda _m, args: out.__setitem__(0, args[0])))
    for k in layers:
        if 0 < k < len(model.layers):
            handles.append(model.layers[k - 1].register_forward_hook(
                lambda _m, _a, y, k=k: out.__setitem__(k, y)))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def hidden_states(model: Transformer, ids: torch.Tensor, attention_mask: torch.Tensor,
                  layers: Sequence[int], token_types: torch.Tensor | None = None
                  ) -> dict[int, torch.Tensor]:
    """{layer: hidden states (B, T, d)} of one pass, for each of `layers` (0 … n_layer)."""
    bad = [k for k in layers if k not in layer_range(model)]
    if bad:
        raise LmforgeError(f"layers {bad} do not exist: this model has layers 0 (embeddings) "
                           f"to {len(model.layers)} (the last block's output)")
    with capture(model, layers) as out:
        final = model.hidden(ids, token_types=token_types, attention_mask=attention_mask)
    out[len(model.layers)] = final
    return {k: out[k] for k in layers}


class SeqCls(Objective):
    """Sequence classification: pool the final hidden states, classify, cross-entropy.
    A batch holds either token rows (ids, attention_mask, token_types, labels) or, for a
    probe on a frozen model, precomputed pooled features (features, labels)."""

    name, families = "seqcls", FAMILIES

    def __init__(self, n_classes: int, pooling: str, hidden: int = 0, dropout: float = 0.0
                 ) -> None:
        self.n_classes, self.pooling = n_classes, pooling
        self.hidden, self.dropout = hidden, dropout

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        raise LmforgeError("seqcls batches come from labelled examples, not a token stream: "
                           "use `lmforge finetune --task seqcls`")

    def scored(self, batch: batches.Batch) -> int:
        return batch["labels"].numel()

    def heads(self, config: ModelConfig) -> dict[str, nn.Module]:
        return {"head": ClassifierHead(config.d_model, self.n_classes, self.hidden,
                                       self.dropout)}

    def pooled(self, model: Transformer, batch: batches.Batch) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        h = model.hidden(batch["ids"], token_types=batch.get("token_types"),
                         attention_mask=batch["attention_mask"])
        return pool(h, batch["attention_mask"], self.pooling)

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        logits = task.head(self.pooled(task.model, batch)).float()
        labels = batch["labels"]
        return {"loss": classification_loss(logits, labels),
                "acc": (logits.argmax(-1) == labels).float().mean()}
