"""Objectives: the loss counts exactly the positions its formula names."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.objectives.causal_lm import causal_lm_loss
from lmforge.objectives.masked_lm import IGNORE, mask_tokens, masked_lm_loss
from lmforge.objectives.prefix_lm import prefix_lm_loss


def test_prefix_lm_scores_only_the_target_part():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=gen)
    targets = torch.randint(11, (2, 6), generator=gen)
    prefix = torch.tensor([3, 1])
    loss = prefix_lm_loss(logits, targets, prefix)
    per = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 6)
    expected = torch.cat([per[0, 2:], per[1, 0:]]).mean()  # target t counts when t + 1 ≥ p
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(prefix_lm_loss(logits, targets, torch.tensor([0, 0])),
                               causal_lm_loss(logits, targets))


def test_mask_tokens_follows_the_80_10_10_rule():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 500), generator=gen)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    corrupted, labels = mask_tokens(ids, mask_id=1, vocab_size=1000, gen=gen, special=special)
    chosen = labels != IGNORE
    assert abs(chosen.float().mean().item() - 0.15) < 0.005 and not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (corrupted == 1) & chosen
    kept = (corrupted == ids) & chosen
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01  # (+ a random token equal to the original)
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_masked_lm_loss_ignores_unchosen_positions():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[IGNORE, 3, IGNORE, 5]])
    expected = F.cross_entropy(logits[0, [1, 3]], torch.tensor([3, 5]))
    torch.testing.assert_close(masked_lm_loss(logits, labels), expected)


def test_span_corruption_round_trips_and_drops_about_15_percent():
    from lmforge.objectives.span_corruption import span_corrupt

    gen = torch.Generator().manual_seed(0)
    sentinels = list(range(1000, 1100))
    dropped = 0
    for length in (10, 57, 200, 512):
        ids = torch.randint(0, 900, (length,), generator=gen).tolist()
        inputs, targets = span_corrupt(ids, sentinels, gen)
        spans = [s for s in inputs if s >= 1000]
        assert spans == sentinels[: len(spans)] == [t for t in targets if t >= 1000]
        # putting each target span back at its sentinel restores the original
        pieces, restored = {}, []
        for t in targets:
            if t >= 1000:
                current = pieces.setdefault(t, [])
            else:
                current.append(t)
        for s in inputs:
            restored += pieces[s] if s >= 1000 else [s]
        assert restored == ids
        dropped += len(targets) - len(spans)
        if length == 512:
            assert abs((len(targets) - len(spans)) / length - 0.15) < 0.01
            assert 20 <= len(spans) <= 30  # about 77 noise tokens / mean span 3


def test_span_corruption_edge_cases():
    import pytest

    from lmforge.errors import LmforgeError
    from lmforge.objectives.span_corruption import span_corrupt

    gen = torch.Generator().manual_seed(0)
    inputs, targets = span_corrupt([5, 6], [100, 101], gen, noise=0.9, mean_span=0.5)
    assert len(inputs) == 2 and len(targets) == 2  # one kept token, one dropped
    with pytest.raises(LmforgeError, match="at least 2"):
        span_corrupt([5], [100], gen)
