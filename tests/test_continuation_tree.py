"""`lmforge.continuation_tree`: a request's context and the trie of its continuations as
one row (tree attention) score every continuation as one full forward pass over context +
continuation would, for every family, shared first tokens and split trees included; the LM
head runs once per scored token; the cuts of length-sorted rows into padded passes are the
cheapest ones (against brute force)."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_families import FAMILIES, make
from test_score import MASK_ID, TOL, full_forward_logprobs, rand_ids

from lmforge import continuation_tree
from lmforge.continuation_tree import PASS_POSITIONS, _groups, build_tree
from lmforge.score import loglikelihood_requests


def test_tree_reads_shared_tokens_once():
    """Context [5, 6]; continuations [1, 2, 3], [1, 2, 4], [1, 7], [9]: the trie holds 1, 2
    (shared) and nothing else to read (last tokens are only predicted)."""
    tree = build_tree([5, 6], [[1, 2, 3], [1, 2, 4], [1, 7], [9]])
    assert tree.ids == [5, 6, 1, 2]
    assert tree.parents == [-1, 0, 1, 2] and tree.depth == [0, 1, 2, 3]
    assert tree.reads == [[1, 2, 3], [1, 2, 3], [1, 2], [1]]
    branch = build_tree([5], [[1, 2, 3], [4, 2, 3]])  # same tokens, other branch
    assert branch.ids == [5, 1, 2, 4, 2] and branch.depth == [0, 1, 2, 1, 2]
    seen = branch.visible(bidirectional_context=False)
    assert seen[4].tolist() == [True, False, False, True, True]  # 5, its parent 4, itself
    assert seen[2].tolist() == [True, True, True, False, False]
    both = build_tree([5, 6, 7], [[1, 2]]).visible(bidirectional_context=True)
    assert both[:3, :3].all() and both[3].all()  # a prefix decoder's context sees itself


def prefix_requests() -> list[tuple[list[int], list[list[int]]]]:
    """Requests whose continuations share first tokens: a common head with different
    tails, one continuation the head itself, a duplicate, a single continuation, and two
    continuations equal."""
    head = rand_ids(3, 60)
    return [(rand_ids(7, 61), [head + rand_ids(4, 62), head + rand_ids(2, 63), head,
                               head + rand_ids(4, 62), head[:1] + rand_ids(3, 64)]),
            (rand_ids(4, 65), [rand_ids(6, 66)]),
            (rand_ids(9, 67), [head + [5], head + [5]]),
            (rand_ids(2, 68), [rand_ids(1, 69), rand_ids(5, 70)])]


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.inference_mode()
def test_shared_first_tokens_score_as_full_forward_passes(family):
    model = make(family)
    requests = prefix_requests()
    for batch, split in ((2, False), (16, False), (16, True)):
        with mock.patch.object(continuation_tree, "BATCH_TOKENS", 12 if split else 2048):
            results = loglikelihood_requests(model, requests, batch=batch, mask_id=MASK_ID)
        for (context, conts), got in zip(requests, results, strict=True):
            for c, scored in zip(conts, got, strict=True):
                ref = full_forward_logprobs(model, context, c)
                assert len(scored.token_logprobs) == len(c)
                assert torch.allclose(torch.tensor(scored.token_logprobs), ref, atol=TOL)
                assert abs(scored.logprob - ref.sum().item()) <= TOL


@torch.inference_mode()
def test_the_head_runs_once_per_scored_token():
    """One row of the head per continuation token: never on padding or on the context
    before its last token."""
    model = make("decoder")
    requests = prefix_requests()
    seen = []
    hook = model.lm_head.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    try:
        loglikelihood_requests(model, requests, batch=3)
    finally:
        hook.remove()
    assert sum(seen) == sum(len(c) for _, conts in requests for c in conts)


def cost(lengths: list[int], groups: list[list[int]]) -> int:
    """Σ_passes rows × longest + PASS_POSITIONS."""
    return sum(len(g) * max(lengths[i] for i in g) + PASS_POSITIONS for g in groups)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=8), st.integers(1, 5))
def test_groups_are_the_cheapest_cuts_within_the_limits(lengths, rows):
    with mock.patch.object(continuation_tree, "BATCH_TOKENS", 60):
        groups = _groups(lengths, rows)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        width = max(lengths[i] for i in g)
        assert len(g) <= rows and (len(g) == 1 or len(g) * width <= 60)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = min(cost(lengths, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))])
               for k in range(len(order))
               for cuts in itertools.combinations(range(1, len(order)), k)
               if all(b - a <= rows and (b - a == 1 or (b - a) * lengths[order[a]] <= 60)
                      for a, b in itertools.pairwise((0, *cuts, len(order)))))
    assert cost(lengths, groups) == best


def test_groups_keep_a_long_row_apart():
    """One long row among short ones gets its own pass: padding the short ones to its
    length would cost more than a second pass."""
    assert sorted(map(sorted, _groups([300, 5, 6, 5, 4], 16))) == [[0], [1, 2, 3, 4]]
    assert _groups([3, 3, 3], 16) == [[0, 1, 2]]
