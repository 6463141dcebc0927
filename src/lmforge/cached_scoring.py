"""The forward passes under `lmforge.score.loglikelihood_requests`: continuations scored
from copies of their context's KV-cache slot, in right-padded passes grouped by length.

Design choices (each measured on SmolLM2, benchmarks/eval_tasks.py, speed part):
- Every pass runs the LM head (49,152 × 576, a fifth of SmolLM2's work per token) on the
  positions that are scored only: `Transformer.hidden`, then `Transformer.logits` of the
  real positions (the last position of a context, the continuation tokens but padding).
- A decoder's prompts (the contexts) go in right-padded passes, and so do the
  continuations, each row from a copy of its context's slot; `_groups` sorts the rows by
  length and cuts them into passes where padding plus a fixed cost per pass is least.
- The tokens that all continuations of a context begin with (`_shared_prefix`) join the
  context's prefill: read once and scored once (HellaSwag's and PIQA's choices often share
  their first words; a single continuation, a LAMBADA target, is all prefill but its last
  token, which is predicted, never read).
- A continuation's last token is only a target: the passes read c[:-1].
Log-probabilities come from `distribution_scores`: logit − logsumexp with the normaliser
accumulated in float64.
"""

from __future__ import annotations

import math

import torch

from lmforge.generate.cache import KVCache
from lmforge.generate.core import encode_source, prefill, prompt_ids
from lmforge.model.transformer import Transformer

BATCH_TOKENS = 2048  # positions per pass of ragged continuations (their logits are fp32)
PASS_POSITIONS = 16  # a pass's fixed cost (its layers' many small ops) in padded positions
LSE_ROWS = 256  # rows of logits normalised at a time in float64


def distribution_scores(logits: torch.Tensor, targets: torch.Tensor, top: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(targets), argmax == targets, top-k ids, top-k log p) of logits (N, V), targets
    (N,): log softmax(z)_i = z_i − logsumexp(z), the normaliser summed in float64 (fp32
    sums over SmolLM2's 49,152 logits drift by up to 1e-5 per token, a bias that adds up
    over a continuation), a block of rows at a time to bound the float64 copy."""
    logits = logits.float()
    lse = torch.cat([z.double().logsumexp(-1) for z in logits.split(LSE_ROWS)])  # (N,)
    logprobs = (logits.gather(-1, targets[:, None])[:, 0] - lse).float()
    greedy = logits.argmax(-1) == targets
    top_logits, top_ids = logits.topk(top, dim=-1)  # (N, k); k = 0 gives empty tensors
    return logprobs, greedy, top_ids, (top_logits - lse[:, None]).float()


def _shared_prefix(continuations: list[list[int]]) -> int:
    """How many leading tokens every continuation shares, each keeping at least its last
    token (so a single continuation shares all but its last token)."""
    limit = min(map(len, continuations)) - 1
    first = continuations[0]
    n = 0
    while n < limit and all(c[n] == first[n] for c in continuations):
        n += 1
    return n


def _groups(lengths: list[int], rows: int) -> list[list[int]]:
    """Indices of `lengths` in right-padded passes of at most `rows` rows and about
    BATCH_TOKENS positions: sorted longest first, then cut where Σ_passes (rows × longest +
    PASS_POSITIONS) is least (dynamic programming over the cuts; a pass of empty rows costs
    nothing, it is never run). Padding is work thrown away, and so is a pass too many."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cost = [0.0] + [math.inf] * len(order)  # cost[j]: the best cuts of order[:j]
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j - 1, max(j - rows, 0) - 1, -1):  # the last pass holds order[i:j]
            width = lengths[order[i]]
            if i < j - 1 and (j - i) * width > BATCH_TOKENS:
                break  # longer and wider as i falls
            c = cost[i] + (j - i) * width + (PASS_POSITIONS if width else 0)
            if c < cost[j]:
                cost[j], cut[j] = c, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]: j])
        j = cut[j]
    return groups[::-1]


def _decoder_prefill(model: Transformer, cache: KVCache, slots: list[int],
                     starts: list[list[int]], kept: list[int]) -> list[torch.Tensor]:
    """A decoder's prompts starts[i] into slots[i], in right-padded passes grouped by length;
    fp32 logits (kept[i], V) of the last kept[i] positions of each: the head runs on those
    positions only."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(starts)
    device = cache.k.device
    for group in _groups([len(s) for s in starts], len(starts)):
        lengths = [len(starts[i]) for i in group]
        width, K = max(lengths), max(kept[i] for i in group)
        ids = torch.tensor([starts[i] + [0] * (width - len(starts[i])) for i in group],
                           device=device)
        n = torch.tensor(lengths, device=device)[:, None]
        keep = (n - K + torch.arange(K, device=device)).clamp(min=0)  # (B, K), real at the end
        step = cache.step([slots[i] for i in group], n_new=lengths, width=width)
        h = model.hidden(ids, cache=step, keep=keep)  # (B, K, d)
        real = torch.arange(K, device=device) >= K - torch.tensor(
            [kept[i] for i in group], device=device)[:, None]
        z = model.logits(h[real])  # (Σ kept, V), row by row
        for i, zi in zip(group, z.split([kept[i] for i in group]), strict=True):
            out[i] = zi
    return out


def _prefill_contexts(model: Transformer, cache: KVCache, starts: list[list[int]],
                      kept: list[int], sources: list[list[int] | None]
                      ) -> tuple[list[int], list[torch.Tensor]]:
    """(slots, fp32 logits (kept[i], V) of the last kept[i] positions of each prompt): a
    decoder's prompts in padded passes; one `prefill` each otherwise (a prefix decoder
    reads its context bidirectionally, an encoder-decoder first encodes its source), whose
    kept[i] is 1."""
    slots = [cache.allocate() for _ in starts]
    if model.config.family == "decoder":
        return slots, _decoder_prefill(model, cache, slots, starts, kept)
    for slot, source in zip(slots, sources, strict=True):
        if source:
            encode_source(model, cache, slot, source)  # copied with the slot, like its keys
    return slots, [prefill(model, cache, slot, start).float()[None]
                   for slot, start in zip(slots, starts, strict=True)]


Scores = tuple[torch.Tensor, torch.Tensor]  # (log p (n,), greedy (n,)) of n tokens


def continuation_scores(model: Transformer, requests: list[tuple[list[int], list[list[int]]]],
                        batch: int) -> list[Scores]:
    """(log p, greedy) of every token of every continuation, request by request, each
    scored from a copy of its context's slot, at most `batch` rows per pass; every request
    has at least one continuation, checked (`lmforge.score._check_request`)."""
    decoder = model.config.family == "decoder"
    prompts = [prompt_ids(model, ctx) for ctx, _ in requests]  # enc-dec: ([start id], ctx)
    shared = [_shared_prefix(conts) if decoder else 0 for _, conts in requests]
    starts = [start + conts[0][:p]
              for (start, _), (_, conts), p in zip(prompts, requests, shared, strict=True)]
    rows = [(r, c[p:]) for r, ((_, conts), p) in enumerate(zip(requests, shared, strict=True))
            for c in conts]
    sources = [source for _, source in prompts]
    # the slots hold start + c[:-1]: the last token of c is scored, never read
    cache = KVCache(model.config, len(requests) + min(batch, len(rows)),
                    max(map(len, starts)) + max(len(c) for _, c in rows) - 1,
                    dtype=model.dtype, device=model.device,
                    source_len=max(map(len, sources)) if sources[0] else None)
    bases, heads = _prefill_contexts(model, cache, starts, [p + 1 for p in shared], sources)
    device = heads[0].device
    # the logits before the last score the shared tokens; the last predicts each row's c_0
    common = [distribution_scores(z[:-1], torch.tensor(conts[0][:p], device=device))[:2]
              for z, (_, conts), p in zip(heads, requests, shared, strict=True)]
    first = torch.stack([z[-1] for z in heads])
    slots = [cache.allocate() for _ in range(cache.n_free)]
    out: list[Scores] = [common[0]] * len(rows)
    for group in _groups([len(c) - 1 for _, c in rows], len(slots)):
        picked = [rows[i] for i in group]
        scores = _score_rows(model, cache, [bases[r] for r, _ in picked], slots,
                             first[[r for r, _ in picked]], [c for _, c in picked])
        for i, (r, _), (lp, greedy) in zip(group, picked, scores, strict=True):
            out[i] = torch.cat([common[r][0], lp]), torch.cat([common[r][1], greedy])
    return out


def _score_rows(model: Transformer, cache: KVCache, bases: list[int], slots: list[int],
                first: torch.Tensor, rows: list[list[int]]
                ) -> list[Scores]:
    """(log p, greedy) of each token of each row, row b continuing a copy of slot bases[b]
    (its keys, values and encoder output) whose last logits are first[b]: one pass over
    c[:-1] of every row, right-padded to the longest (`KVCache.step` with n_new per row),
    the head on the real positions only."""
    slots = slots[: len(rows)]
    for base, s in zip(bases, slots, strict=True):
        cache.copy(base, s)
    device = first.device
    n_new = [len(c) - 1 for c in rows]
    width = max(n_new)
    lp, greedy, _, _ = distribution_scores(first, torch.tensor([c[0] for c in rows],
                                                               device=device))
    rest_lp = torch.empty(0, device=device)
    rest_greedy = torch.empty(0, dtype=torch.bool, device=device)
    if width:
        ids = torch.tensor([c[:-1] + [0] * (width - n) for c, n in zip(rows, n_new, strict=True)],
                           device=device)
        step = cache.step(slots, n_new=n_new, width=width)
        h = model.hidden(ids, cache=step, memory=cache.cross(slots))  # (B, width, d)
        real = torch.arange(width, device=device) < torch.tensor(n_new, device=device)[:, None]
        # row b's output t predicts c_{t+1}: the real outputs, row by row, and their targets
        rest_lp, rest_greedy, _, _ = distribution_scores(
            model.logits(h[real]), torch.tensor([t for c in rows for t in c[1:]], device=device))
    return [(torch.cat([lp[b, None], x]), torch.cat([greedy[b, None], g]))
            for b, (x, g) in enumerate(zip(rest_lp.split(n_new), rest_greedy.split(n_new),
                                           strict=True))]
