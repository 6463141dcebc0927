"""SFT batches and the `sft` objective: padded conversations or packed windows.

Without packing, a batch is `batch_size` conversations drawn at random (with replacement,
from the trainer's generator, so a resumed run draws the same ones), right-padded to the
longest. With `packing = true`, conversations are laid end to end, in file order, into
windows of `max_len` tokens (a conversation that does not fit starts the next window; none
is split), and a batch is `batch_size` windows. Each packed conversation keeps to itself:
`docs` numbers them per window, and `sft.sft_store` gives attention a block-diagonal causal
mask and positions restarting at 0, so a packed conversation's logits are those it has alone
(no cross-contamination, unlike packers that only insert an EOS between examples). This holds
for every lmforge decoder: the mask and positions reach attention through the KV store.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmforge.adapt.sft import IGNORE, Example, pad_batch, token_losses
from lmforge.data import batches
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.objectives.registry import Losses, Objective, SamplerInputs


def pack(examples: list[Example], max_len: int) -> list[list[Example]]:
    """Consecutive examples grouped into windows of at most `max_len` tokens."""
    windows: list[list[Example]] = [[]]
    used = 0
    for ex in examples:
        if len(ex.ids) > max_len:
            raise LmforgeError(f"an example of {len(ex.ids)} tokens exceeds max_len={max_len}")
        if used + len(ex.ids) > max_len and windows[-1]:
            windows.append([])
            used = 0
        windows[-1].append(ex)
        used += len(ex.ids)
    return windows


def packed_batch(windows: list[list[Example]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Rows of concatenated examples with `docs` (1, 2, … per example; 0 on padding)."""
    rows = [Example([i for ex in w for i in ex.ids], [lab for ex in w for lab in ex.labels])
            for w in windows]
    batch = pad_batch(rows, pad_id)
    docs = torch.zeros_like(batch["ids"])
    for r, w in enumerate(windows):
        pos = 0
        for d, ex in enumerate(w, 1):
            docs[r, pos:pos + len(ex.ids)] = d
            pos += len(ex.ids)
    batch["docs"] = docs
    return batch


class SftSampler:
    """Random conversations (padded) or random packed windows: sampler(gen, n) → batch."""

    def __init__(self, examples: list[Example], packing: bool, max_len: int,
                 pad_id: int = 0) -> None:
        self.pad_id, self.packing = pad_id, packing
        self.items = pack(examples, max_len) if packing else examples

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, gen: torch.Generator, n: int) -> batches.Batch:
        index = torch.randint(len(self.items), (n,), generator=gen).tolist()
        chosen = [self.items[i] for i in index]
        return packed_batch(chosen, self.pad_id) if self.packing else pad_batch(chosen,
                                                                               self.pad_id)


class Sft(Objective):
    """Instruction SFT: mean cross-entropy over assistant tokens (`adapt/sft.py`),
    L = −(1/N) Σ_{t: label_{t+1} ≠ −100} log p(label_{t+1} | ids_{≤t})."""

    name, families = "sft", ("decoder",)

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        raise LmforgeError("sft batches come from conversations, not a token stream: use "
                           "`lmforge finetune --task sft`")

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def heads(self, config: ModelConfig) -> dict[str, nn.Module]:
        return {}

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        return {"loss": token_losses(task.model, batch).mean()}
