"""Denoising (BART, Lewis et al. 2020, §2.2): corrupt a text, and train an encoder-decoder
to reconstruct the original from it,

    L = −(1/N) Σ_t log p(x_t | x_<t, noise(x))

with any composition of the paper's noise functions:

- token masking: each token becomes [MASK] with probability r (as BERT, without 80/10/10);
- token deletion: each token is deleted with probability r (the model must find where);
- text infilling: spans with lengths drawn from Poisson(λ = 3) are replaced by one [MASK]
  each until about r of the tokens are covered; a 0-length span inserts a [MASK]
  (the model must find how many tokens each mask stands for);
- sentence permutation: the sentences (here: lines) are shuffled.

BART-large uses text infilling (r = 0.3) with sentence permutation; the transforms below
take and return plain id lists and draw from an explicit `torch.Generator`.
"""

from __future__ import annotations

import torch

NOISES = ("mask", "delete", "infill", "permute")


def token_mask(ids: list[int], mask_id: int, rate: float, gen: torch.Generator) -> list[int]:
    """Each token → [MASK] with probability `rate`."""
    hit = (torch.rand(len(ids), generator=gen) < rate).tolist()
    return [mask_id if h else i for i, h in zip(ids, hit, strict=True)]


def token_delete(ids: list[int], rate: float, gen: torch.Generator) -> list[int]:
    """Each token dropped with probability `rate`."""
    hit = (torch.rand(len(ids), generator=gen) < rate).tolist()
    return [i for i, h in zip(ids, hit, strict=True) if not h]


def infill_spans(n: int, rate: float, gen: torch.Generator, lam: float = 3.0
                 ) -> list[tuple[int, int]]:
    """Sorted, non-overlapping (start, length) spans covering round(rate·n) of n tokens:
    lengths ~ Poisson(λ) are drawn until they reach that count (the last one cut to fit);
    the n − masked kept tokens are split into the gaps before the spans at random (sorted
    uniform cut points), so spans never overlap. Length-0 spans are insertion points."""
    budget = round(n * rate)
    lengths: list[int] = []
    while sum(lengths) < budget:
        lengths.append(int(torch.poisson(torch.tensor(lam), generator=gen).item()))
    if lengths:
        lengths[-1] -= sum(lengths) - budget
    kept_before = sorted(torch.randint(n - budget + 1, (len(lengths),), generator=gen).tolist())
    spans, masked = [], 0
    for kept, k in zip(kept_before, lengths, strict=True):
        spans.append((kept + masked, k))
        masked += k
    return spans


def text_infill(ids: list[int], mask_id: int, rate: float, gen: torch.Generator,
                lam: float = 3.0) -> list[int]:
    """Each span of `infill_spans` replaced by a single [MASK]."""
    out, pos = [], 0
    for s, k in infill_spans(len(ids), rate, gen, lam):
        out += ids[pos: s] + [mask_id]
        pos = s + k
    return out + ids[pos:]


def permute_sentences(ids: list[int], ends: list[bool], gen: torch.Generator) -> list[int]:
    """Shuffle the sentences; `ends[i]`: a sentence ends after token i (the text after the
    last end is a sentence too)."""
    sentences, current = [], []
    for i, end in zip(ids, ends, strict=True):
        current.append(i)
        if end:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    order = torch.randperm(len(sentences), generator=gen).tolist()
    return [i for k in order for i in sentences[k]]


def denoise(ids: list[int], ends: list[bool], noises: list[str], mask_id: int, rate: float,
            gen: torch.Generator) -> list[int]:
    """The noise functions in BART's order: permutation first (it needs the sentence ends),
    then the token-level ones."""
    if "permute" in noises:
        ids = permute_sentences(ids, ends, gen)
    if "mask" in noises:
        ids = token_mask(ids, mask_id, rate, gen)
    if "delete" in noises:
        ids = token_delete(ids, rate, gen)
    if "infill" in noises:
        ids = text_infill(ids, mask_id, rate, gen)
    return ids
