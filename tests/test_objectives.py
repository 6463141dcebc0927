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


# -- next-sentence prediction ------------------------------------------------------------

def _doc_text(n_docs: int = 12, n_lines: int = 4) -> str:
    """Documents of unique lines `d3l2`, separated by blank lines."""
    return "\n\n".join("\n".join(f"d{d}l{k}" for k in range(n_lines)) for d in range(n_docs)) + "\n"


def _pairs_sampler(text: str, block: int = 64):
    import numpy as np

    from lmforge.data.batches import SentencePairs
    from lmforge.data.lines import line_index, newline_counts, specials_for
    from lmforge.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text(text)
    tokens = np.array(tok.encode(text), dtype=np.uint16)
    sp = specials_for(tok)
    newlines, blank = newline_counts(tok, sp.vocab_size)
    lines = line_index(tokens, newlines, blank)
    return tok, sp, lines, SentencePairs(tokens, lines, block, sp, 0.15)


def test_line_index_finds_lines_and_documents():
    tok, _, lines, _ = _pairs_sampler(_doc_text(3, 2))
    text = _doc_text(3, 2)
    ids = tok.encode(text)
    got = [(tok.decode(ids[s:e]), int(d)) for s, e, d in zip(lines.start, lines.end, lines.doc,
                                                             strict=True)]
    assert got == [("d0l0\n", 0), ("d0l1\n", 0), ("d1l0\n", 1), ("d1l1\n", 1), ("d2l0\n", 2),
                   ("d2l1\n", 2)]


def test_nsp_pairs_are_half_true_continuations_with_bert_layout():
    import re

    from lmforge.objectives.nsp import IS_NEXT, NOT_NEXT

    tok, sp, _, sampler = _pairs_sampler(_doc_text())
    gen = torch.Generator().manual_seed(0)
    labels = []
    for _ in range(400):
        a, b, label = sampler.pair(gen)
        la = re.findall(r"d(\d+)l(\d+)", tok.decode(a))
        lb = re.findall(r"d(\d+)l(\d+)", tok.decode(b))
        assert la and lb and len({d for d, _ in la}) == 1 == len({d for d, _ in lb})
        assert [int(k) for _, k in la] == list(range(int(la[0][1]), int(la[0][1]) + len(la)))
        if label == IS_NEXT:  # B starts at the line after A's last, in the same document
            assert lb[0] == (la[-1][0], str(int(la[-1][1]) + 1))
        else:
            assert label == NOT_NEXT and lb[0][0] != la[0][0]
        labels.append(label)
    assert abs(sum(labels) / len(labels) - 0.5) < 0.08
    batch = sampler(gen, 16)
    for ids, types, mask in zip(batch["ids"], batch["token_types"], batch["attention_mask"],
                                strict=True):
        seps = (ids == sp.sep).nonzero().flatten().tolist()
        n = int(mask.sum())
        assert ids[0] == sp.cls and len(seps) == 2 and seps[1] == n - 1
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1: n] == 1).all()
        assert (types[n:] == 0).all() and (ids[n:] == sp.pad).all() and (mask[:n] == 1).all()
    chosen = batch["labels"] != -100
    assert not chosen[batch["attention_mask"] == 0].any()
    assert set(batch["nsp_labels"].tolist()) <= {IS_NEXT, NOT_NEXT}


def test_truncate_pair_keeps_contiguous_pieces_within_the_budget():
    from lmforge.objectives.nsp import truncate_pair

    gen = torch.Generator().manual_seed(0)
    a, b = list(range(30)), list(range(100, 110))
    ta, tb = truncate_pair(a, b, 25, gen)
    assert len(ta) + len(tb) == 25 and tb == b  # only the longer one is cut here
    assert ta == a[ta[0]: ta[0] + len(ta)]


def test_reserved_specials_follow_the_tokenizer():
    from lmforge.data.lines import specials_for
    from lmforge.tokenizers import CharTokenizer

    plain = specials_for(CharTokenizer.from_text("abc"))
    assert (plain.pad, plain.cls, plain.sep, plain.mask) == (3, 4, 5, 6)
    assert plain.sentinels[0] == 7 and plain.vocab_size == 107 and plain.n_text == 3
    own = specials_for(CharTokenizer.from_text("abc", extra_special=["[MASK]"]))
    assert own.mask == 0 and own.pad == 4 and own.vocab_size == 107


# -- BART denoising ----------------------------------------------------------------------

def test_token_masking_and_deletion_keep_what_they_should():
    from lmforge.objectives.denoising import token_delete, token_mask

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (5000,), generator=gen).tolist()
    masked = token_mask(ids, 1, 0.3, gen)
    assert len(masked) == len(ids)
    assert all(m in (1, i) for m, i in zip(masked, ids, strict=True))
    assert abs(masked.count(1) / len(ids) - 0.3) < 0.03
    kept = token_delete(ids, 0.3, gen)
    assert abs(len(kept) / len(ids) - 0.7) < 0.03
    it = iter(ids)
    assert all(k in it for k in kept)  # an order-preserving subsequence


def test_text_infilling_replaces_each_span_by_one_mask():
    from lmforge.objectives.denoising import infill_spans, text_infill

    for seed in range(20):
        ids = list(range(10, 210))
        spans = infill_spans(len(ids), 0.3, torch.Generator().manual_seed(seed))
        out = text_infill(ids, 1, 0.3, torch.Generator().manual_seed(seed))
        assert out.count(1) == len(spans)
        assert sum(k for _, k in spans) == 60  # 30% of 200 tokens
        # putting each span back at its mask restores the original
        fills = iter(ids[s: s + k] for s, k in spans)
        restored = [t for x in out for t in (next(fills) if x == 1 else [x])]
        assert restored == ids
    lengths = [k for seed in range(200) for _, k in
               infill_spans(1000, 0.3, torch.Generator().manual_seed(seed))]
    assert 2.5 < sum(lengths) / len(lengths) < 3.5 and 0 in lengths  # Poisson(3), with 0s


def test_sentence_permutation_keeps_the_sentence_multiset():
    from lmforge.objectives.denoising import denoise, permute_sentences

    gen = torch.Generator().manual_seed(0)
    ids = list(range(40))
    ends = [i % 7 == 6 for i in ids]  # sentences of 7 tokens, then a partial one
    out = permute_sentences(ids, ends, gen)
    sentences = sorted(tuple(ids[i: i + 7]) for i in range(0, 40, 7))

    def split(seq):
        cut = [k + 1 for k, x in enumerate(seq) if x % 7 == 6 or x == 39]
        return sorted(tuple(seq[a:b]) for a, b in zip([0, *cut], cut, strict=False))

    assert out != ids and split(out) == sentences
    noisy = denoise(ids, ends, ["permute", "infill"], 99, 0.3, gen)
    assert 99 in noisy and len(noisy) < len(ids)


def test_seq2seq_batches_pad_and_shift_the_target():
    from lmforge.data.batches import seq2seq_batch
    from lmforge.data.lines import specials_for
    from lmforge.tokenizers import CharTokenizer

    sp = specials_for(CharTokenizer.from_text("abcdef"))
    b = seq2seq_batch([([0, 1, 2], [7, 8]), ([3], [9])], sp, start=sp.pad)
    assert b["src"].tolist() == [[0, 1, 2], [3, sp.pad, sp.pad]]
    assert b["src_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["dec"].tolist() == [[sp.pad, 7, 8], [sp.pad, 9, sp.pad]]
    assert b["labels"].tolist() == [[7, 8, sp.sep], [9, sp.sep, -100]]
