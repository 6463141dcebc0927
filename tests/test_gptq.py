"""GPTQ on one layer (`compress.gptq.gptq_quantize`): equal to the paper's unblocked
column-by-column update, better than round-to-nearest on the layer's output, equal to it
when the Hessian is the identity; dead inputs, act_order, clear errors."""

from __future__ import annotations

import pytest
import torch

from lmforge.compress.gptq import gptq_quantize
from lmforge.compress.schemes import Scheme, decode, encode, fit, rtn
from lmforge.errors import LmforgeError

OUT, IN, N = 48, 128, 1024


def calibration(seed: int = 0, dead: tuple[int, ...] = ()) -> torch.Tensor:
    """Correlated inputs X (N, IN) with input scales spread over 0.2…3 (as activations are)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(IN, IN, generator=gen) / IN ** 0.5
    x = (torch.randn(N, IN, generator=gen) @ mix + 0.1 * torch.randn(N, IN, generator=gen))
    x = x * torch.linspace(0.2, 3.0, IN)
    x[:, list(dead)] = 0
    return x


def weight(seed: int = 1) -> torch.Tensor:
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed))


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.T @ x / x.shape[0]


def output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """‖WX − ŴX‖² over the calibration inputs."""
    return float(((x @ (w - w_hat).T) ** 2).sum())


def sequential_obs(w: torch.Tensor, h: torch.Tensor, scheme: Scheme, damp: float = 0.01
                   ) -> torch.Tensor:
    """The paper's update without Cholesky or blocks, in float64: quantize column j, move the
    later columns by −err · (H_F⁻¹)_{j,F} / (H_F⁻¹)_jj, then drop j from H_F⁻¹ (equations
    (3) and (4) of Frantar et al. 2022); group parameters fitted when a group starts."""
    w, h = w.double().clone(), h.double().clone()
    group = scheme.group_for(w.shape[1])
    hinv = torch.linalg.inv(h + damp * h.diagonal().mean() * torch.eye(h.shape[0]))
    codes = []
    for j in range(w.shape[1]):
        if j % group == 0:
            scale, zero = fit(scheme, w[:, j:j + group])
        q = encode(scheme, w[:, j:j + 1], scale, zero)
        codes.append(q)
        err = (w[:, j:j + 1] - decode(scheme, q, scale, zero).double()) / hinv[j, j]
        w[:, j:] -= err * hinv[j:j + 1, j:]
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]
    return torch.cat(codes, dim=1)


@pytest.mark.parametrize("name", ["int8", "int8-g32", "int4-g32", "int4-g64"])
@pytest.mark.parametrize("block_size", [1, 32, 128])
def test_blocked_cholesky_form_equals_the_sequential_update(name, block_size):
    scheme = Scheme.parse(name)
    w, h = weight(), hessian(calibration())
    ref = sequential_obs(w, h, scheme)
    codes = gptq_quantize(w, h, scheme, block_size=block_size).codes
    assert (codes == ref).float().mean() > 0.999  # float32 against float64: a rare tie


@pytest.mark.parametrize("name", ["int8", "int8-g32", "int4-g32", "int4-g128"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_reconstructs_the_output_better_than_rtn(name, act_order):
    scheme = Scheme.parse(name)
    x, w = calibration(), weight()
    q = gptq_quantize(w, hessian(x), scheme, act_order=act_order)
    assert q.codes.shape == (OUT, IN)
    rtn_error = output_error(w, rtn(scheme, w).dequantize(), x)
    assert output_error(w, q.dequantize(), x) < 0.8 * rtn_error


@pytest.mark.parametrize("name", ["int8", "int8-g32", "int4-g32"])
def test_identity_hessian_is_round_to_nearest(name):
    scheme = Scheme.parse(name)
    w = weight()
    q, r = gptq_quantize(w, torch.eye(IN), scheme), rtn(scheme, w)
    assert torch.equal(q.codes, r.codes)
    assert torch.equal(q.scale, r.scale)
    assert q.scale.shape == r.scale.shape
    assert (q.zero is None) == (r.zero is None)
    if q.zero is not None:
        assert torch.equal(q.zero, r.zero)


def test_dead_inputs_are_rounded_to_nearest_and_decoupled():
    dead = (3, 40, 41)
    x, w = calibration(dead=dead), weight()
    h = hessian(x)
    assert (h.diagonal()[list(dead)] == 0).all()
    scheme = Scheme.parse("int8")  # one scale per row: a dead column's code is RTN's
    q = gptq_quantize(w, h, scheme)
    assert torch.isfinite(q.dequantize()).all()
    assert torch.equal(q.codes[:, list(dead)], rtn(scheme, w).codes[:, list(dead)])
    assert output_error(w, q.dequantize(), x) < output_error(w, rtn(scheme, w).dequantize(), x)
    everything_dead = gptq_quantize(w, torch.zeros(IN, IN), scheme)  # an unused MoE expert
    assert torch.equal(everything_dead.codes, rtn(scheme, w).codes)


def test_act_order_puts_the_codes_back_in_column_order():
    # per channel the parameters ignore the column order: quantizing permuted columns under
    # the permuted Hessian must give the permuted codes
    scheme = Scheme.parse("int8")
    x, w = calibration(), weight()
    perm = torch.randperm(IN, generator=torch.Generator().manual_seed(2))
    q = gptq_quantize(w, hessian(x), scheme, act_order=True)
    qp = gptq_quantize(w[:, perm], hessian(x[:, perm]), scheme, act_order=True)
    assert (qp.codes == q.codes[:, perm]).float().mean() > 0.999


def test_act_order_keeps_the_plain_group_layout():
    scheme = Scheme.parse("int4-g32")
    x, w = calibration(), weight()
    q = gptq_quantize(w, hessian(x), scheme, act_order=True)
    assert q.scale.shape == q.zero.shape == (OUT, IN // 32)
    r = rtn(scheme, w)  # static groups: fitted on the original weight, as RTN fits them
    assert torch.equal(q.scale, r.scale) and torch.equal(q.zero, r.zero)
    assert (q.codes <= 15).all()


def test_hessian_scale_does_not_matter():
    x, w = calibration(), weight()
    scheme = Scheme.parse("int4-g32")
    a = gptq_quantize(w, hessian(x), scheme).codes
    b = gptq_quantize(w, 1000 * hessian(x), scheme).codes
    assert (a == b).float().mean() > 0.999


@pytest.mark.parametrize(("args", "message"), [
    ((weight(), torch.eye(IN), "fp8-e4m3"), "not fp8-e4m3"),
    ((weight(), torch.eye(IN + 1), "int8"), "Hessian must be"),
    ((weight()[0], torch.eye(IN), "int8"), "2-D weight"),
    ((weight(), torch.full((IN, IN), float("nan")), "int8"), "NaN"),
    ((weight()[:, :80], torch.eye(80), "int4-g64"), "groups of 64"),
    ((weight(), -torch.eye(IN), "int8"), "not positive definite"),
    ((weight(), torch.eye(IN), "int5"), "unknown quantization scheme"),
])
def test_clear_errors(args, message):
    with pytest.raises(LmforgeError, match=message):
        gptq_quantize(*args)
