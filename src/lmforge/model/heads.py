"""Heads that read a Transformer's final hidden states (`Transformer.hidden`).

- Mean pooling (Reimers & Gurevych, 2019, "Sentence-BERT"): the sentence vector is the mean
  of its token vectors, padding excluded: u = Σ_t m_t·h_t / Σ_t m_t, with m the attention
  mask. all-MiniLM-L6-v2 and most sentence-transformers models are trained with it.
- CLS pooling (Devlin et al., 2019, "BERT"): the vector of the first token, [CLS].
- L2 normalisation, u / max(‖u‖₂, ε), makes the dot product of two embeddings their cosine.

- Next-sentence prediction (BERT's pre-training head): BERT's pooler, a dense layer with
  tanh over the [CLS] vector, then a linear classifier over {IsNext, NotNext}:
  logits = W_c · tanh(W_p · h_[CLS] + b_p) + b_c.

- The LM head, `Transformer.lm_head`: a `Linear` of its own, or with tied embeddings
  (Press & Wolf, 2017, "Using the Output Embedding to Improve Language Models") `TiedHead`,
  logits = h · Eᵀ with E the token embedding matrix. Either is a module that
  `Transformer.forward` calls, so it can be replaced from outside; masked-LM training reads
  it at the masked positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.linear import PackedWeights, linear


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) and (B, T) of 1/0 → (B, d), the mean over each row's real tokens, in fp32."""
    m = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    # clamp: a row of padding only gives a zero vector, not NaN (as sentence-transformers)
    return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, d) → (B, d): the first position's vector ([CLS] in BERT), in fp32."""
    return hidden[:, 0].float()


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(‖x‖₂, eps) along the last dimension (torch.nn.functional.normalize)."""
    return F.normalize(x, p=2, dim=-1, eps=eps)


class NSPHead(nn.Module):
    """BERT's pooler + next-sentence classifier: (B, T, d) hidden states → (B, 2) logits."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.pool = nn.Linear(d_model, d_model)
        self.classify = nn.Linear(d_model, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.tanh(self.pool(hidden[:, 0])))


class TiedHead(PackedWeights, nn.Module):
    """logits = h · Eᵀ, with E the weight of `embedding` (vocab, d): (…, d) → (…, vocab).

    The embedding is held as a plain attribute, not a submodule, so the matrix stays one
    parameter saved once, as `embed.weight`; `weight` reads it each time, so it follows
    whatever the embedding holds (a reload, a move, a new dtype)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.__dict__["embedding"] = embedding  # bypasses nn.Module's registration

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    @property
    def in_features(self) -> int:
        return self.embedding.embedding_dim

    @property
    def out_features(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied"
