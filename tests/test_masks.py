"""Attention masks of the four families, as tensors, text and a picture."""

from __future__ import annotations

import torch

from lmforge.cli import main
from lmforge.model.masks import family_masks, grid, prefix_mask


def test_prefix_mask_is_bidirectional_inside_the_prefix_and_causal_after():
    mask = prefix_mask(6, 3)
    for i in range(6):
        for j in range(6):
            assert bool(mask[i, j]) == (j <= i or j < 3)
    assert torch.equal(prefix_mask(5, 0), torch.ones(5, 5, dtype=torch.bool).tril())


def test_family_masks_and_grid():
    enc_dec = family_masks("encoder_decoder", 4, source_len=6)
    assert [tuple(m.shape) for m in enc_dec.values()] == [(6, 6), (4, 4), (4, 6)]
    assert grid(family_masks("decoder", 3)["self-attention (causal)"]) == \
        "x . .\nx x .\nx x x"
    assert family_masks("encoder", 3)["self-attention (bidirectional)"].all()


def test_masks_command_prints_and_draws(tmp_path, capsys):
    png = tmp_path / "masks.png"
    assert main(["masks", "--family", "prefix", "--len", "8", "--prefix", "3", "--png",
                 str(png)]) == 0
    out = capsys.readouterr().out
    assert "x x x . . . . ." in out and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["masks", "--family", "prefix", "--len", "4", "--prefix", "9"]) == 2


def test_prefix_decoder_sees_its_prefix_both_ways():
    """Changing a later target token leaves earlier target positions alone; changing a prefix
    token changes every position. The causal decoder passes the mirror-image tests."""
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer

    model = Transformer(ModelConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_ff=64,
                                    family="prefix", max_seq_len=16))
    model.init_weights(std=0.2, seed=0)
    ids = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(1))
    prefix = torch.tensor([4])
    with torch.inference_mode():
        base = model(ids, prefix=prefix)
        later = ids.clone()
        later[0, 7] = (later[0, 7] + 1) % 50
        moved = model(later, prefix=prefix)
        assert torch.allclose(moved[0, :7], base[0, :7], atol=1e-6)
        assert not torch.allclose(moved[0, 7:], base[0, 7:], atol=1e-4)
        early = ids.clone()
        early[0, 3] = (early[0, 3] + 1) % 50
        changed = (model(early, prefix=prefix) - base).abs().amax(-1)[0]
        assert (changed > 1e-4).all()  # positions 0-2 too: the prefix is bidirectional
        causal = (model(early) - model(ids)).abs().amax(-1)[0]
        assert (causal[:3] < 1e-6).all() and (causal[3:] > 1e-4).all()
