"""Our torch dequantization kernels against the reference `gguf.quants.dequantize`.

Two kinds of input per type: random raw blocks (every bit pattern of the codes and scales,
with the f16 scale fields forced finite so the comparison is not NaN against NaN), and, for
the types gguf can quantize, real quantized data. K-quants only get raw blocks: gguf cannot
quantize to them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.interop import quants

# byte offsets of the f16 scale fields in one block of each type (see quants.py's table)
F16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}
QUANTIZABLE = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16, T.F16, T.F32)


def random_blocks(qtype: T, n_blocks: int, seed: int) -> np.ndarray:
    """(n_blocks, type_size) random bytes whose f16 fields hold finite values."""
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        scale = rng.normal(0, 0.05, size=n_blocks).astype(np.float16)
        raw[:, offset:offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw


def ours(raw: np.ndarray, qtype: T, shape: tuple[int, ...]) -> np.ndarray:
    return quants.dequantize(torch.from_numpy(raw.copy()).reshape(-1), qtype, shape).numpy()


@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=lambda t: t.name)
@pytest.mark.parametrize("n_blocks", [1, 7, 2100])  # 2100 K-blocks cross the chunk boundary
def test_random_blocks_match_gguf(qtype: T, n_blocks: int) -> None:
    raw = random_blocks(qtype, n_blocks, seed=n_blocks)
    block, _ = GGML_QUANT_SIZES[qtype]
    ref = ref_dequantize(raw, qtype).reshape(-1)
    got = ours(raw, qtype, (n_blocks * block,))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)  # bit-exact


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_weights_match_gguf(qtype: T) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.02, size=(48, 256)).astype(np.float32)
    raw = ref_quantize(weights, qtype)
    ref = ref_dequantize(raw, qtype)
    got = ours(raw.view(np.uint8), qtype, (48, 256))
    np.testing.assert_array_equal(got, ref)
    # and the dequantized weights are near the originals: the data path is the right one
    assert np.abs(got - weights).max() < 0.02


@settings(max_examples=25, deadline=None)
@given(qtype=st.sampled_from(QUANTIZABLE), rows=st.integers(1, 9), blocks_per_row=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_quantize_roundtrip_any_shape(qtype: T, rows: int, blocks_per_row: int, seed: int
                                      ) -> None:
    cols = 32 * blocks_per_row
    weights = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    raw = ref_quantize(weights, qtype)
    np.testing.assert_array_equal(ours(raw.view(np.uint8), qtype, (rows, cols)),
                                  ref_dequantize(raw, qtype))


@settings(max_examples=25, deadline=None)
@given(qtype=st.sampled_from(list(F16_FIELDS)), n_blocks=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1))
def test_random_blocks_any_seed(qtype: T, n_blocks: int, seed: int) -> None:
    raw = random_blocks(qtype, n_blocks, seed)
    block, _ = GGML_QUANT_SIZES[qtype]
    np.testing.assert_array_equal(ours(raw, qtype, (n_blocks * block,)),
                                  ref_dequantize(raw, qtype).reshape(-1))


def test_float_types_keep_special_values() -> None:
    values = np.array([0.0, -0.0, 1.5, -2.25, 65504.0, np.inf, -np.inf], dtype=np.float32)
    for qtype, np_dtype in ((T.F32, np.float32), (T.F16, np.float16)):
        raw = values.astype(np_dtype).view(np.uint8)
        np.testing.assert_array_equal(ours(raw, qtype, (7,)), values)
    raw = ref_quantize(values, T.BF16).view(np.uint8)
    np.testing.assert_array_equal(ours(raw, T.BF16, (7,)), ref_dequantize(raw, T.BF16))


def test_f32_result_does_not_alias_the_input() -> None:
    raw = torch.from_numpy(np.arange(4, dtype=np.float32).view(np.uint8).copy())
    out = quants.dequantize(raw, T.F32, (4,))
    raw.zero_()
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("qtype", [T.IQ2_XXS, T.Q8_1, 99])
def test_unsupported_type_names_type_and_tensor(qtype: int) -> None:
    with pytest.raises(LmforgeError) as err:
        quants.dequantize(torch.zeros(66, dtype=torch.uint8), qtype, (256,), "blk.3.ffn_up.weight")
    message = str(err.value)
    assert "blk.3.ffn_up.weight" in message and "Q4_K" in message  # lists what is supported
    assert (T(qtype).name if qtype != 99 else "type id 99") in message


def test_shape_and_byte_count_must_agree() -> None:
    with pytest.raises(LmforgeError, match="not a multiple of the Q8_0 block size 32"):
        quants.dequantize(torch.zeros(34, dtype=torch.uint8), T.Q8_0, (31,), "x")
    with pytest.raises(LmforgeError, match=r"shape \(2, 32\) as Q8_0 needs 68 bytes, got 34"):
        quants.dequantize(torch.zeros(34, dtype=torch.uint8), T.Q8_0, (2, 32), "x")
    with pytest.raises(LmforgeError, match="needs 12 bytes"):
        quants.dequantize(torch.zeros(8, dtype=torch.uint8), T.F32, (3,), "x")
