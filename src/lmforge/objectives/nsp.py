"""Next-sentence prediction (BERT, Devlin et al. 2019, §3.1 "Task #2"): the input is a pair
of segments A and B,

    [CLS] A [SEP] B [SEP] [PAD] …          token types 0 … 0 0  1 … 1 1  0 …

where B is the segment that follows A in its document half of the time (IsNext, label 0)
and a segment from another document otherwise (NotNext, label 1; the labels of BERT's
`next_sentence_label`). A classifier over the final [CLS] vector learns which:

    L_NSP = −(1/B) Σ_b log p(y_b | h_[CLS])

BERT's pre-training loss is L_MLM + L_NSP; RoBERTa (Liu et al. 2019) drops NSP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IS_NEXT, NOT_NEXT = 0, 1


def truncate_pair(a: list[int], b: list[int], budget: int, gen: torch.Generator
                  ) -> tuple[list[int], list[int]]:
    """Shorten the longer segment one token at a time, from its front or back at random,
    until len(a) + len(b) ≤ budget (BERT's `truncate_seq_pair`)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        longer = a if len(a) > len(b) else b
        if torch.rand((), generator=gen).item() < 0.5:
            del longer[0]
        else:
            longer.pop()
    return a, b


def pair_layout(a: list[int], b: list[int], cls: int, sep: int, pad: int, length: int
                ) -> tuple[list[int], list[int], list[int]]:
    """(ids, token types, attention mask) of `[CLS] a [SEP] b [SEP]`, right-padded to
    `length`; padding has type 0 and mask 0."""
    ids = [cls, *a, sep, *b, sep]
    n_pad = length - len(ids)
    if n_pad < 0:
        raise ValueError(f"a pair of {len(a)} + {len(b)} tokens does not fit {length}")
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * n_pad
    return ids + [pad] * n_pad, types, [1] * len(ids) + [0] * n_pad


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, 2) of the NSP head, labels (B,) of IS_NEXT / NOT_NEXT."""
    return F.cross_entropy(logits.float(), labels)
