"""Token classification: a tag for every token, from the encoder's final hidden states.

    logits_t = W h_t + b,   L = −(1/N) Σ_{t scored} log softmax(logits_t)[y_t]

over the N positions whose label is not `IGNORE` (padding). The head is one linear layer
(BERT's token-classification head, Devlin et al., 2019, §4.3). Optional binary features per
token (`BitFeatures`, such as the tagger's dictionary matches) are added to the embeddings.
`TokenCls` is a trainer objective (`objectives/registry.py: Objective`): its batches come
from tagged rows, not from a token stream, so its trainer is assembled by the task (the
B/M/E/S tagger: `segment/tagger.py`), as fine-tuning's is (`adapt/finetune.py`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data import batches
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.objectives.masked_lm import IGNORE
from lmforge.objectives.registry import Losses, Objective, SamplerInputs


class TokenHead(nn.Module):
    """A linear map from each hidden state to the tags' scores."""

    def __init__(self, d_model: int, n_tags: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, n_tags)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


class BitFeatures(nn.Module):
    """Binary token features (packed as the bits of one integer per token) mapped to the
    model's width and added to the token embeddings: e_t = E[id_t] + W bits_t."""

    def __init__(self, n_bits: int, d_model: int) -> None:
        super().__init__()
        self.n_bits = n_bits
        self.proj = nn.Linear(n_bits, d_model, bias=False)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        bits = (packed.unsqueeze(-1) >> torch.arange(self.n_bits, device=packed.device)) & 1
        return self.proj(bits.to(self.proj.weight.dtype))


def tag_logits(model: Transformer, heads: nn.Module, batch: batches.Batch) -> torch.Tensor:
    """Scores (B, T, n_tags) in fp32 of right-padded rows: `batch` holds ids (B, T),
    attention_mask (B, T) and, when `heads` has features, their packed bits (B, T)."""
    ids, mask = batch["ids"], batch["attention_mask"]
    if hasattr(heads, "bits"):
        embeds = model.embed(ids) + heads.bits(batch["bits"])
        h = model.hidden(embeds=embeds, attention_mask=mask)
    else:
        h = model.hidden(ids, attention_mask=mask)
    return heads.head(h).float()


class TokenCls(Objective):
    """A batch holds ids (B, T), attention_mask (B, T) and labels (B, T), IGNORE where
    padded; reports the loss and the tag accuracy over scored positions."""

    name, families = "tokcls", ("encoder",)

    def __init__(self, n_tags: int, n_bits: int = 0) -> None:
        self.n_tags, self.n_bits = n_tags, n_bits

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        raise LmforgeError("tokcls batches come from tagged rows, not a token stream: train "
                           "a segmentation tagger with `lmforge segment-train --config FILE`")

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def heads(self, config: ModelConfig) -> dict[str, nn.Module]:
        heads: dict[str, nn.Module] = {"head": TokenHead(config.d_model, self.n_tags)}
        if self.n_bits:
            heads["bits"] = BitFeatures(self.n_bits, config.d_model)
        return heads

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        labels = batch["labels"]
        logits = tag_logits(task.model, task, batch)
        scored = labels != IGNORE
        right = (logits.argmax(-1) == labels) & scored
        return {"loss": F.cross_entropy(logits[scored], labels[scored]),
                "acc": right.sum() / scored.sum().clamp(min=1)}
