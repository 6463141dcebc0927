"""Quantization schemes and `QuantLinear` (compress/schemes.py, compress/linear.py): round to
nearest within each grid's bound, int4 packing round trips, every kernel computes x·Ŵᵀ + b
(Ŵ = the dequantized weight) in fp32 and bf16, gradients reach the input, and the state dict
holds only codes, scales, zeros and bias."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.compress import int4pack
from lmforge.compress.linear import QuantLinear, fp8_scaled_product
from lmforge.compress.schemes import FP8_DTYPES, Scheme, pack_int4, rtn, unpack_int4
from lmforge.errors import LmforgeError

SCHEMES = ("int8", "w8a8", "int8-g32", "int4-g32", "int4-g64", "int4-g128", "fp8-e4m3",
           "fp8-e5m2", "fp8-e4m3-tensor")
KERNELS = {"int8": "int8pack_mm", "w8a8": "int_mm", "int8-g32": "dequant_mm",
           "int4-g32": "int4pack_mm", "int4-g64": "int4pack_mm", "int4-g128": "int4pack_mm",
           "fp8-e4m3": "dequant_mm", "fp8-e5m2": "dequant_mm", "fp8-e4m3-tensor": "dequant_mm"}
FP8_RELATIVE = {"e4m3": 2.0 ** -4, "e5m2": 2.0 ** -3}  # half an ulp of 3 and 2 mantissa bits


def weight(out: int = 96, cols: int = 256, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=gen)
    w[3] *= 40  # one row of a much larger range: per-row and per-group scales must follow it
    return w


def per_element(params: torch.Tensor, cols: int) -> torch.Tensor:
    return params.repeat_interleave(cols // params.shape[1], 1) if params.dim() == 2 \
        else params.view(-1, 1)


@pytest.mark.parametrize("name", [s for s in SCHEMES if not s.startswith("fp8")])
def test_integer_grids_round_within_half_a_step(name: str) -> None:
    w = weight()
    q = rtn(Scheme.parse(name), w)
    step = per_element(q.scale, w.shape[1])
    err = (q.dequantize() - w).abs()
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all()
    assert err.max() > step.min() / 4  # rounding happened: the test can fail


@pytest.mark.parametrize("name", [s for s in SCHEMES if s.startswith("fp8")])
def test_fp8_rounds_within_its_relative_bound(name: str) -> None:
    scheme = Scheme.parse(name)
    w = weight()
    q = rtn(scheme, w)
    scaled = w / per_element(q.scale, w.shape[1])
    normal = scaled.abs() >= torch.finfo(FP8_DTYPES[scheme.fp8_format]).smallest_normal
    rel = ((q.dequantize() - w).abs() / w.abs())[normal]
    assert rel.max() <= FP8_RELATIVE[scheme.fp8_format] * (1 + 1e-6)
    assert rel.max() > FP8_RELATIVE[scheme.fp8_format] / 4


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2 ** 31 - 1))
def test_int4_packing_round_trips(rows: int, pairs: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, 2 * pairs), generator=gen, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (rows, pairs) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)


def test_int4_packing_needs_even_columns() -> None:
    with pytest.raises(LmforgeError, match="even number of columns"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


def reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """x·Ŵᵀ + b in float64; W8A8 with x rounded per token as its kernel does."""
    x = x.double()
    if layer.scheme.dynamic_activations:
        s = (x.abs().amax(-1, keepdim=True) / 127).float().double()
        x = torch.clamp(torch.round(x / s), -127, 127) * s
    return x @ layer.dequantize(torch.float64).t() + layer.bias.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", SCHEMES)
def test_forward_is_x_times_the_dequantized_weight(name: str, dtype: torch.dtype) -> None:
    w = weight()
    layer = QuantLinear.from_weight(rtn(Scheme.parse(name), w), torch.randn(96)).to(dtype)
    assert layer.kernel == KERNELS[name]
    torch.testing.assert_close(layer.dequantize(torch.float64),
                               layer.quantized_weight().dequantize().double(), rtol=0, atol=0)
    x = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y = layer(x)
    assert y.shape == (2, 5, 96) and y.dtype == dtype
    ref = reference(layer, x)
    # fp32: accumulation order; bf16 (and the packed kernels, which compute fp32 activations
    # in bf16): the 8 bits of mantissa of the activations and of the output
    exact = dtype == torch.float32 and not layer.kernel.endswith("pack_mm")
    tol = 2e-5 if exact else 2e-2
    assert ((y.double() - ref).abs() / ref.abs().amax()).max() < tol


def test_codes_keep_their_format_when_the_module_is_cast() -> None:
    for name in ("int8", "int4-g32", "fp8-e5m2"):
        layer = QuantLinear.from_weight(rtn(Scheme.parse(name), weight()))
        codes = layer.stored_codes().clone()
        layer.to(torch.bfloat16)
        assert layer.stored_codes().dtype == codes.dtype and layer.scale.dtype == torch.bfloat16
        layer.float()
        assert layer.scale.dtype == torch.float32 and layer.stored_codes().dtype == codes.dtype
        if name.startswith("int4"):
            assert layer.scales_zeros.dtype == torch.bfloat16  # the kernel's, whatever x is
        assert torch.equal(layer.stored_codes().view(torch.uint8), codes.view(torch.uint8))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([16, 32, 48, 64, 80, 96, 112, 128, 208]), st.sampled_from([32, 64, 160]),
       st.integers(0, 2 ** 31 - 1))
def test_int4_kernel_layout_unpacks_exactly(out: int, cols: int, seed: int) -> None:
    """Row counts below, at and across the kernel's row blocks (16 to 64 by ISA); packing the
    stored bytes block by block gives the whole matrix's layout."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out, cols), generator=gen, dtype=torch.uint8)
    packed = int4pack.pack(codes)
    assert packed.shape == (out, cols // 2) and packed.dtype == torch.uint8
    assert torch.equal(int4pack.unpack(packed, out, cols), codes)
    assert torch.equal(int4pack.pack_stored(pack_int4(codes)), packed)


def test_int4_layer_holds_its_codes_once_in_the_kernel_layout() -> None:
    q = rtn(Scheme.parse("int4-g32"), weight())
    layer = QuantLinear.from_weight(q, torch.randn(96))
    held = dict(layer.named_buffers())
    assert "codes" not in held and held["int4_packed"].shape == (96, 128)
    sd = layer.state_dict()
    assert list(sd) == ["bias", "scale", "zero", "codes"]
    assert torch.equal(sd["codes"], pack_int4(q.codes))
    assert torch.equal(layer.quantized_weight().codes, q.codes)
    x = torch.randn(3, 256)
    other = QuantLinear.from_weight(rtn(Scheme.parse("int4-g32"), weight(seed=5)),
                                    torch.randn(96))
    other.load_state_dict(sd)  # into a layer that holds the kernel's layout already
    assert "codes" not in dict(other.named_buffers())
    assert torch.equal(other(x), layer(x))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in sd.items())


def test_gradient_reaches_the_input_through_the_dequantized_weight() -> None:
    layer = QuantLinear.from_weight(rtn(Scheme.parse("int4-g32"), weight()), torch.randn(96))
    x = torch.randn(3, 256, requires_grad=True)
    g = torch.randn(3, 96)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, g @ layer.dequantize(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, ratio", [("int8", 0.25), ("int4-g32", 0.125 + 0.0625),
                                         ("fp8-e4m3", 0.25)])
def test_state_dict_holds_codes_and_scales_only(name: str, ratio: float) -> None:
    w = weight()
    layer = QuantLinear.from_weight(rtn(Scheme.parse(name), w), torch.zeros(96))
    sd = layer.state_dict()
    zero = ["zero"] if name.startswith("int4") else []
    assert sorted(sd) == sorted(["bias", "codes", "scale", *zero])
    size = sum(t.numel() * t.element_size() for k, t in sd.items() if k != "bias")
    # fp32 is 4 bytes per weight; int4-g32: ½ byte of codes + 2 fp32 per 32 weights
    assert size == pytest.approx(ratio * w.numel() * 4, rel=0.02)


def test_odd_row_counts_fall_back_to_dequantize() -> None:
    layer = QuantLinear.from_weight(rtn(Scheme.parse("int4-g32"), weight(out=40)))
    assert layer.kernel == "dequant_mm"
    x = torch.randn(4, 256)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t())


@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2-tensor"])
def test_fp8_scaled_product_rounds_activations_to_e4m3(name: str) -> None:
    """The CUDA path's arithmetic (torch._scaled_mm), run by PyTorch's CPU implementation:
    x scaled per row into e4m3, times the fp8 weight, rescaled."""
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this PyTorch has no _scaled_mm")
    q = rtn(Scheme.parse(name), weight())
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    s = x.abs().amax(-1, keepdim=True) / torch.finfo(torch.float8_e4m3fn).max
    xq = (x / s).to(torch.float8_e4m3fn).double() * s.double()
    ref = xq @ q.dequantize().double().t()
    y = fp8_scaled_product(x, q.codes, q.scale)  # bf16 output, cast back
    assert ((y.double() - ref).abs() / ref.abs().amax()).max() < 1e-2


def test_moving_to_the_meta_device_picks_its_product_and_back() -> None:
    """Off the CPU the packed kernels do not apply (meta stands in for another device)."""
    for name in ("int8", "int4-g32", "w8a8"):
        layer = QuantLinear.from_weight(rtn(Scheme.parse(name), weight()))
        layer.to("meta")
        assert layer.kernel == "dequant_mm"
        layer.to_empty(device="cpu")
        assert layer.kernel == KERNELS[name]
    layer = QuantLinear.from_weight(rtn(Scheme.parse("int4-g32"), weight()))
    codes = layer.stored_codes()
    layer.to("meta")
    assert layer.codes.is_meta and "int4_packed" not in dict(layer.named_buffers())
    layer = QuantLinear.from_weight(rtn(Scheme.parse("int4-g32"), weight()))
    layer.to(torch.float16)  # a cast keeps the kernel's layout, and the codes it gives back
    assert layer.kernel == "int4pack_mm" and torch.equal(layer.stored_codes(), codes)
