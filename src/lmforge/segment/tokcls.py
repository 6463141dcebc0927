"""Token classification: a tag for every token, from the encoder's final hidden states.

    logits_t = W h_t + b,   L = −(1/N) Σ_{t scored} log softmax(logits_t)[y_t]

over the N positions whose label is not `IGNORE` (padding). The head is one linear layer
(BERT's token-classification head, Devlin et al., 2019, §4.3). `TokenCls` is a trainer
objective (`objectives/registry.py: Objective`): its batches come from tagged rows, not from
a token stream, so its trainer is assembled by the task (the B/M/E/S tagger:
`segment/tagger.py`), as fine-tuning's is (`adapt/finetune.py`).
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


def tag_logits(model: Transformer, head: nn.Module, ids: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Scores (B, T, n_tags) in fp32 of right-padded rows `ids` (B, T)."""
    h = model.hidden(ids, attention_mask=attention_mask)
    return head(h).float()


class TokenCls(Objective):
    """A batch holds ids (B, T), attention_mask (B, T) and labels (B, T), IGNORE where
    padded; reports the loss and the tag accuracy over scored positions."""

    name, families = "tokcls", ("encoder",)

    def __init__(self, n_tags: int) -> None:
        self.n_tags = n_tags

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        raise LmforgeError("tokcls batches come from tagged rows, not a token stream: train "
                           "a segmentation tagger with `lmforge segment-train --config FILE`")

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def heads(self, config: ModelConfig) -> dict[str, nn.Module]:
        return {"head": TokenHead(config.d_model, self.n_tags)}

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        labels = batch["labels"]
        logits = tag_logits(task.model, task.head, batch["ids"], batch["attention_mask"])
        scored = labels != IGNORE
        right = (logits.argmax(-1) == labels) & scored
        return {"loss": F.cross_entropy(logits[scored], labels[scored]),
                "acc": right.sum() / scored.sum().clamp(min=1)}
