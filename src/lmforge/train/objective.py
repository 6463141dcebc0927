"""`ObjectiveModel`: the Transformer plus its objective's heads, as one trainable module.

The objective is an entry of `objectives/registry.py` (its batches, scored positions, loss
and extra heads, such as BERT's NSP classifier). Wrapping the Transformer and those heads
in one module means that one module holds every trained parameter: DDP and FSDP wrap it,
and its forward turns one batch into a dict of losses whose "loss" is what the trainer
minimises. Only the Transformer goes into the checkpoint directory (loadable like any
model); the heads travel in the training state.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.data import batches
from lmforge.model.transformer import Transformer
from lmforge.objectives.registry import Objective


class ObjectiveModel(nn.Module):
    """The Transformer plus the objective's heads; forward(batch) → {"loss": …, parts…}."""

    def __init__(self, model: Transformer, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        for name, head in objective.heads(model.config).items():
            self.add_module(name, head)

    def heads(self) -> dict[str, torch.Tensor]:
        """The heads' parameters (everything but the Transformer), for the training state."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def shard(self, batch: batches.Batch, rows: slice, world_size: int) -> batches.Batch:
        """This rank's rows of a global batch. Their token-level loss is scaled by
        `share` = world_size · n_rank / n_global, so that the ranks' average (what DDP and
        FSDP take of the gradients) is the global batch's mean over all its scored tokens,
        also when ranks score different numbers of tokens (MLM, prefix LM, seq2seq)."""
        local = {k: v[rows] for k, v in batch.items()}
        if world_size > 1:
            share = world_size * self.objective.scored(local) / self.objective.scored(batch)
            local["share"] = torch.tensor(share)
        return local

    def forward(self, batch: batches.Batch) -> dict[str, torch.Tensor]:
        out = self.objective.losses(self, batch)
        if "share" in batch:
            token_loss = out[self.objective.token_loss]
            out["loss"] = out["loss"] + (batch["share"] - 1) * token_loss
        return out
