"""Knowledge distillation (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a
Neural Network"): the student matches the teacher's softened distribution, mixed with the
ordinary cross-entropy of the true labels:

    L = α · T² · (1/N) Σ_t KL(softmax(z_t/T) ‖ softmax(s_t/T)) + (1 − α) · (1/N) Σ_t CE(s_t, y_t)

over the N scored positions t (labels ≠ −100), z the teacher's logits, s the student's, T the
temperature and α the weight of the soft targets. The gradient of the KL term scales as 1/T²
(section 2 of the paper), so T² keeps the two terms' balance when T changes.

The teacher comes either whole (`teacher_logprobs` of shape (…, V)) or as its top k
(`teacher_ids` and `teacher_logprobs` of shape (…, k), log-probabilities at T = 1, as
`adapt/distill.py` caches them). Top-k handling: the teacher's mass outside its top k is
dropped and the rest renormalised,

    q_i = exp(ℓ_i / T) / Σ_{j∈K} exp(ℓ_j / T)          i ∈ K (the teacher's top k)

which is softmax(z/T) restricted to K, exactly, for every T (ℓ = z − logsumexp(z): the
normaliser cancels). The student's log-probabilities are those of its full softmax at T, so

    KL_K = Σ_{i∈K} q_i (log q_i − log p_i),   p = softmax(s/T) over the whole vocabulary

which is ≥ 0 (Σ_{i∈K} p_i ≤ 1) and penalises mass the student puts outside K; with k = V it
is the full KL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.objectives.masked_lm import IGNORE

if TYPE_CHECKING:
    import numpy as np

    from lmforge.data.batches import Sampler


class Teacher(Protocol):
    """Where a distillation run's teacher targets come from (`adapt/distill.py`): a sampler
    over one split's tokens whose batches add teacher_logprobs (and teacher_ids for top k)."""

    def sampler(self, tokens: np.ndarray, block: int) -> Sampler: ...


def soft_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor,
            teacher_ids: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """KL(q ‖ p) per position at temperature T: the full KL when `teacher_ids` is None, the
    top-k KL_K of the module docstring otherwise. Shapes (…, V) or (…, k) → (…)."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
    if teacher_ids is not None:
        log_p = log_p.gather(-1, teacher_ids.long())
    q = log_q.exp()
    # xlogy: 0 · log 0 = 0, so a teacher probability that underflows adds nothing
    return (torch.xlogy(q, q) - q * log_p).sum(-1)


def distill_loss(student_logits: torch.Tensor, labels: torch.Tensor,
                 teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor | None = None,
                 temperature: float = 2.0, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """{"loss": L, "kl": mean KL at T (without T²), "ce": mean CE} over the positions whose
    label is not −100; student_logits (…, V), labels (…), teacher as in `soft_kl`."""
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise LmforgeError(f"distillation needs temperature > 0 and 0 ≤ alpha ≤ 1, got "
                           f"temperature={temperature}, alpha={alpha}")
    scored = labels != IGNORE
    if not scored.any():
        raise LmforgeError("distillation batch has no scored position (every label is −100)")
    logits = student_logits[scored]
    ce = F.cross_entropy(logits.float(), labels[scored])
    ids = teacher_ids[scored] if teacher_ids is not None else None
    kl = soft_kl(logits, teacher_logprobs[scored], ids, temperature).mean()
    return {"loss": alpha * temperature ** 2 * kl + (1 - alpha) * ce, "kl": kl, "ce": ce}
