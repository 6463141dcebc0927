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
