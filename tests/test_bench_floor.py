"""The weight-streaming floor of benchmarks/decode.py counts what a decode step reads: every
projection and the head once (an untied head too), no embedding table, and is the faster of
its two measurements."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from decode import floor, streamed_matrices  # noqa: E402

from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402

V, D, L, FF = 97, 32, 2, 64


def tiny(tied: bool) -> Transformer:
    config = ModelConfig(vocab_size=V, d_model=D, n_layer=L, n_head=4, n_kv_head=2, d_ff=FF,
                         max_seq_len=16, tie_embeddings=tied)
    model = Transformer(config)
    model.init_weights(seed=0)
    return model


def per_layer() -> int:
    # q (D×D), k and v (2 × D/2 × D with 2 of 4 heads), o (D×D), gate and up (2·FF×D), down
    return D * D + 2 * (D // 2) * D + D * D + 2 * FF * D + D * FF


@pytest.mark.parametrize("tied", [True, False])
def test_streamed_matrices_count_the_head_once(tied: bool) -> None:
    model = tiny(tied)
    mats = streamed_matrices(model)
    assert sum(m.numel() for m in mats) == L * per_layer() + V * D
    assert len({m.data_ptr() for m in mats}) == len(mats)
    assert any(m.data_ptr() == model.head_weight().data_ptr() for m in mats)
    if not tied:  # the untied embedding table is read one row per token, not whole
        assert all(m.data_ptr() != model.embed.weight.data_ptr() for m in mats)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_floor_is_the_faster_of_one_matrix_and_the_sweep(dtype: torch.dtype) -> None:
    model = tiny(False).to(dtype)
    r = floor(model, 1)
    assert r["weight_bytes"] == (L * per_layer() + V * D) * torch.tensor([], dtype=dtype
                                                                         ).element_size()
    assert r["floor_gb_per_s"] == max(r["sweep_gb_per_s"], r["one_matrix_gb_per_s"])
    assert r["floor_from"] in ("sweep", "one_matrix")
    assert r["floor_tokens_per_s"] == pytest.approx(r["floor_gb_per_s"] * 1e9 / r["weight_bytes"])
