"""Span corruption (T5, Raffel et al. 2020, §3.1.4): drop random spans of tokens from the
input, each replaced by one sentinel token; the target lists the dropped spans, each after
its sentinel. With noise density 15% and mean span length 3:

    original: The  cute dog  walks in the park
    input:    The  <X>  walks in  <Y>  park
    target:   <X>  cute dog  <Y>  the

The loss is the encoder-decoder's cross-entropy on the target (`causal_lm_loss` over the
decoder's outputs); this module builds the pairs.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError


def _segment(total: int, parts: int, gen: torch.Generator) -> list[int]:
    """A random split of `total` items into `parts` non-empty runs (T5's random_segmentation)."""
    cuts = sorted(torch.randperm(total - 1, generator=gen)[: parts - 1].add(1).tolist())
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def span_corrupt(ids: list[int], sentinels: list[int], gen: torch.Generator,
                 noise: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of one sequence; sentinels[k] marks the k-th dropped span."""
    n = len(ids)
    if n < 2:
        raise LmforgeError("span corruption needs sequences of at least 2 tokens")
    n_noise = min(max(round(n * noise), 1), n - 1)
    n_spans = min(max(round(n_noise / mean_span), 1), n_noise, n - n_noise, len(sentinels))
    noise_runs = _segment(n_noise, n_spans, gen)
    keep_runs = _segment(n - n_noise, n_spans, gen)
    inputs, targets, pos = [], [], 0
    for k, (keep, drop) in enumerate(zip(keep_runs, noise_runs, strict=True)):
        inputs += ids[pos: pos + keep] + [sentinels[k]]
        pos += keep
        targets += [sentinels[k]] + ids[pos: pos + drop]
        pos += drop
    return inputs, targets
