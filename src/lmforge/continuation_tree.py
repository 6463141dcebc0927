"""Continuations scored as a tree: the forward passes under
`lmforge.score.loglikelihood_requests`.

One request (a context and its continuations) is one row of a batch: the context's tokens,
then a trie of its continuations' tokens (each without its last token, which is only
predicted, never read), so tokens that several continuations begin with are read once
(HellaSwag's and PIQA's choices often share their first words). Each token attends to the
tokens on its path from the first context token (its ancestors) and to itself, at position
= its depth: "tree attention", as speculative decoding verifies a tree of drafts (Miao et
al., 2024, SpecInfer; Cai et al., 2024, Medusa). Every token of every continuation then has
the same context, the same positions and the same visible keys as in one full pass over
context + continuation, so the scores are equal up to rounding. A prefix decoder's context
tokens also see each other (its bidirectional prefix); an encoder-decoder's row is the
decoder's [decoder_start_id] and its targets' trie, against its own source.

Design choices, for speed on CPUs at a few threads (benchmarks/eval_tasks.py, speed part):
- One pass reads every context once and every shared token once, with no KV cache: no
  prefill pass, no slot copies, no cache to allocate and zero.
- Rows are sorted by length and cut into right-padded passes by dynamic programming
  (`_groups`), where padding plus a fixed cost per pass is least: a machine shared by many
  processes makes each small op slow, so passes are few and large.
- The LM head (49,152 × 576, a fifth of SmolLM2's work per token) runs on the positions
  that predict a scored token only: `Transformer.hidden`, then `Transformer.logits`.
Log-probabilities come from `distribution_scores`: logit − logsumexp with the normaliser
accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.model.attention import KVStore
from lmforge.model.transformer import Transformer

BATCH_TOKENS = 2048  # positions per pass (rows × longest row); a longer tree is split
PASS_POSITIONS = 64  # a pass's fixed cost (its layers' many small ops) in padded positions
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


Scores = tuple[torch.Tensor, torch.Tensor]  # (log p (n,), greedy (n,)) of n tokens


@dataclass
class Tree:
    """One row: tokens in an order where a parent comes before its children."""

    ids: list[int]
    parents: list[int]  # the index of each token's parent, −1 for the first
    depth: list[int]  # each token's position: its distance from the first token
    n_context: int  # the first n_context tokens are the context, a chain
    reads: list[list[int]]  # per continuation c: the token whose output predicts c_t, per t
    targets: list[list[int]]  # the continuations

    def visible(self, bidirectional_context: bool) -> np.ndarray:
        """(T, T) bool: token i sees token j when j is i or one of its ancestors (and, with
        `bidirectional_context`, any context token when i is in the context)."""
        T = len(self.ids)
        seen = np.zeros((T, T), dtype=bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                seen[i] = seen[parent]
            seen[i, i] = True
        if bidirectional_context:
            seen[: self.n_context, : self.n_context] = True
        return seen


def build_tree(context: list[int], continuations: list[list[int]]) -> Tree:
    """The context as a chain, then the trie of every continuation without its last token;
    the context's last token predicts every continuation's first."""
    n = len(context)
    ids, parents, depth = list(context), list(range(-1, n - 1)), list(range(n))
    child: dict[tuple[int, int], int] = {}
    reads = []
    for c in continuations:
        node = n - 1
        path = [node]
        for token in c[:-1]:
            if (node, token) not in child:
                child[node, token] = len(ids)
                ids.append(token)
                parents.append(node)
                depth.append(depth[node] + 1)
            node = child[node, token]
            path.append(node)
        reads.append(path)
    return Tree(ids, parents, depth, n, reads, [list(c) for c in continuations])


def _trees(context: list[int], continuations: list[list[int]]) -> list[Tree]:
    """A request's rows: one tree, or several (each with the context) when its continuations
    would make a row longer than BATCH_TOKENS."""
    chunks: list[list[list[int]]] = [[]]
    size = len(context)
    for c in continuations:
        if chunks[-1] and size + len(c) - 1 > BATCH_TOKENS:
            chunks.append([])
            size = len(context)
        chunks[-1].append(c)
        size += len(c) - 1
    return [build_tree(context, chunk) for chunk in chunks]


class TreeStore(KVStore):
    """The `KVStore` of a pass over trees: this pass's keys are all there are (no cache),
    at the tokens' depths, visible as the trees' mask (B, 1, T, T) says."""

    causal = False

    def __init__(self, positions: torch.Tensor, mask: torch.Tensor) -> None:
        self.positions = self.key_positions = positions
        self.length = positions.shape[1]
        self.mask = mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


def _memory(model: Transformer, sources: list[list[int]]):
    """An encoder-decoder's cross-attention memory of right-padded sources, one per row."""
    width = max(map(len, sources))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sources], device=model.device)
    mask = (torch.arange(width, device=model.device)
            < torch.tensor([len(s) for s in sources], device=model.device)[:, None]).long()
    return model.cross_memory(model.encode(ids, mask), mask)


def _score_pass(model: Transformer, trees: list[Tree], sources: list[list[int]] | None
                ) -> list[list[Scores]]:
    """(log p, greedy) of every continuation of every tree, from one right-padded pass."""
    device = model.device
    width = max(len(t.ids) for t in trees)
    mask = np.zeros((len(trees), width, width), dtype=bool)
    mask[:, np.arange(width), np.arange(width)] = True  # padding sees itself: no empty row
    bidirectional = model.config.family == "prefix"
    for b, t in enumerate(trees):
        mask[b, : len(t.ids), : len(t.ids)] = t.visible(bidirectional)
    ids = torch.tensor([t.ids + [0] * (width - len(t.ids)) for t in trees], device=device)
    positions = torch.tensor([t.depth + [0] * (width - len(t.ids)) for t in trees],
                             device=device)
    store = TreeStore(positions, torch.from_numpy(mask).to(device)[:, None])
    memory = _memory(model, sources) if sources is not None else None
    h = model.hidden(ids, cache=store, memory=memory)  # (B, T, d)
    # one row of the head per scored token: the output of the token that predicts it
    rows = torch.tensor([b for b, t in enumerate(trees) for r in t.reads for _ in r],
                        device=device)
    cols = torch.tensor([i for t in trees for r in t.reads for i in r], device=device)
    targets = torch.tensor([x for t in trees for c in t.targets for x in c], device=device)
    lp, greedy, _, _ = distribution_scores(model.logits(h[rows, cols]), targets)
    sizes = [len(c) for t in trees for c in t.targets]
    it = zip(lp.split(sizes), greedy.split(sizes), strict=True)
    return [[next(it) for _ in t.targets] for t in trees]


def continuation_scores(model: Transformer, requests: list[tuple[list[int], list[list[int]]]],
                        batch: int) -> list[Scores]:
    """(log p, greedy) of every token of every continuation, request by request; every
    request has at least one continuation, each checked (`lmforge.score._check_request`),
    at most `batch` rows (trees) per pass."""
    encdec = model.config.family == "encoder_decoder"
    rows, owner = [], []  # the trees, and the request each belongs to
    for r, (context, conts) in enumerate(requests):
        # an encoder-decoder's context is its source; its decoder starts from the start id
        start = [model.config.decoder_start_id] if encdec else context
        for tree in _trees(start, conts):
            rows.append(tree)
            owner.append(r)
    scores: list[list[Scores]] = [[] for _ in rows]
    for group in _groups([len(t.ids) for t in rows], batch):
        sources = [requests[owner[i]][0] for i in group] if encdec else None
        for i, s in zip(group, _score_pass(model, [rows[i] for i in group], sources),
                        strict=True):
            scores[i] = s
    return [s for row in scores for s in row]  # the rows of a request are in order


def _groups(lengths: list[int], rows: int) -> list[list[int]]:
    """Indices of `lengths` in right-padded passes of at most `rows` rows and about
    BATCH_TOKENS positions: sorted longest first, then cut where Σ_passes (rows × longest +
    PASS_POSITIONS) is least (dynamic programming over the cuts). Padding is work thrown
    away, and so is a pass too many."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cost = [0.0] + [math.inf] * len(order)  # cost[j]: the best cuts of order[:j]
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j - 1, max(j - rows, 0) - 1, -1):  # the last pass holds order[i:j]
            width = lengths[order[i]]
            if i < j - 1 and (j - i) * width > BATCH_TOKENS:
                break  # longer and wider as i falls
            c = cost[i] + (j - i) * width + PASS_POSITIONS
            if c <= cost[j]:  # a tie: the fewer passes
                cost[j], cut[j] = c, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]: j])
        j = cut[j]
    return groups[::-1]
