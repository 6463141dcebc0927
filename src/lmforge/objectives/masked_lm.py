"""Masked language modelling (BERT, Devlin et al. 2019): choose 15% of the tokens; of those,
replace 80% with [MASK], 10% with a random token and keep 10% unchanged; predict the
original token at the chosen positions only:

    L = −(1/|M|) Σ_{i ∈ M} log p(x_i | x̃)

RoBERTa (Liu et al. 2019) trains with this loss alone; BERT adds next-sentence prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, gen: torch.Generator,
                special: torch.Tensor | None = None, rate: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids, labels): labels hold the original id at chosen positions, else −100.
    `special` (bool, like ids) marks tokens never chosen ([CLS], [SEP], padding)."""
    chosen = torch.rand(ids.shape, generator=gen) < rate
    if special is not None:
        chosen &= ~special
    labels = ids.masked_fill(~chosen, IGNORE)
    roll = torch.rand(ids.shape, generator=gen)
    corrupted = ids.clone()
    corrupted[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=gen)
    return corrupted, labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the chosen positions (labels ≠ −100)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
