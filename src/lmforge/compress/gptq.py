"""GPTQ (Frantar, Ashkboos, Hoefler and Alistarh, 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", arXiv 2210.17323): quantize a weight
column by column, each column's rounding error spread over the columns not yet quantized so
that the layer's output on a calibration set moves as little as possible.

For one linear layer with weight W (out × in) and calibration inputs X (in × n), GPTQ
minimises ‖WX − ŴX‖² row by row. Its Hessian is H = 2XXᵀ (+ λI, λ = damp · mean diag H).
Quantizing column j to ŵ_j and updating the remaining columns F (Optimal Brain Surgeon,
equation (3) of the paper restricted to one row and the columns after j):

    δ_F = −(w_j − ŵ_j) / [H_F⁻¹]_jj · (H_F⁻¹)_{j,:}

Algorithm 1 of the paper takes the rows of H_F⁻¹ for all j at once from the upper Cholesky
factor U of H⁻¹ (H⁻¹ = UᵀU): the update of column j is err_j · U_{j, j:} with
err_j = (w_j − ŵ_j) / U_jj. Columns go in blocks of B (`block_size`); inside a block the
updates are applied at once to the block, and the whole block's errors E (out × B) reach
the later columns in one product, W_{:, end:} −= E · U_{block, end:} (lazy batch updates).

Quantization parameters (`schemes.fit`): int8 per channel fits once on the whole row; with
groups (int4-gG, int8-gG) a group's scale and zero are fitted when its first column is
reached, on the group's columns as already updated by the errors before it (the block is a
multiple of G so that a group never straddles two blocks: `block_size` is rounded to one).
Dead inputs (a column of X that is always zero, H_jj = 0) get H_jj = 1: they are decoupled
from the others, so their weights are rounded to nearest and no error flows through them.
The reference implementation zeroes them instead; both give the same output on the
calibration set, and keeping them keeps the layer right for inputs the calibration missed.

`act_order` quantizes columns in order of decreasing H_jj (the largest inputs first, while
the most columns remain to absorb their error) and puts the codes back in column order.
Group parameters are then fitted before any update, group by group in the original column
order (the reference's `static_groups=True`): the stored layout stays the plain
(out, in / G) one, which the int4 kernel reads, instead of a per-column group index.

`gptq_weights` runs a whole model sequentially, block by block (`compress/calibrate.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from lmforge.compress.calibrate import Inputs, block_inputs, collect_hessians, run_block
from lmforge.compress.schemes import QuantizedWeight, Scheme, decode, encode, fit
from lmforge.errors import LmforgeError
from lmforge.interop.threads import single_threaded
from lmforge.model.surgery import projections


def parse_scheme(scheme: Scheme | str) -> Scheme:
    """The scheme, parsed if given by name; fp8 has no GPTQ here (a clear error)."""
    scheme = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    if scheme.kind == "fp8":
        raise LmforgeError(f"GPTQ supports int8, int8-gG and int4-gG, not {scheme.name}: "
                           "quantize fp8 with method rtn (fp8's grid has no fixed step for "
                           "the error compensation to work against)")
    return scheme


def _inverse_cholesky(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), computed in float64."""
    L, info = torch.linalg.cholesky_ex(H.double())
    if info:
        raise LmforgeError("the calibration Hessian is not positive definite even after "
                           "damping; raise damp (e.g. 0.1) or use more calibration samples")
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if info:
        raise LmforgeError("the inverse calibration Hessian is numerically singular; raise "
                           "damp (e.g. 0.1)")
    return U.float()


def _check(weight: torch.Tensor, hessian: torch.Tensor, block_size: int, damp: float) -> None:
    if weight.dim() != 2:
        raise LmforgeError(f"GPTQ quantizes a 2-D weight (out × in), got shape "
                           f"{tuple(weight.shape)}")
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise LmforgeError(f"the Hessian must be ({cols}, {cols}) for a weight with {cols} "
                           f"inputs, got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all() or not torch.isfinite(weight).all():
        raise LmforgeError("the weight or the Hessian holds NaN or inf; check the model and "
                           "the calibration inputs")
    if block_size < 1 or damp < 0:
        raise LmforgeError(f"block_size must be ≥ 1 and damp ≥ 0, got {block_size} and {damp}")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, scheme: Scheme | str,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = False
                  ) -> QuantizedWeight:
    """Quantize `weight` (out × in) with GPTQ under `hessian` (in × in, 2XXᵀ of the layer's
    calibration inputs; any positive multiple gives the same result); see the module
    docstring for the algorithm."""
    scheme = parse_scheme(scheme)
    _check(weight, hessian, block_size, damp)
    # one thread: the column loop is thousands of small ops, each paying OpenMP's fork and
    # join otherwise (a 1536 × 576 weight: 8.7 s on 2 loaded threads, 0.6 s on 1)
    with single_threaded():
        return _gptq(weight.detach().float().clone(), hessian.detach(), scheme, block_size,
                     damp, act_order)


def _gptq(W: torch.Tensor, hessian: torch.Tensor, scheme: Scheme, block_size: int,
          damp: float, act_order: bool) -> QuantizedWeight:
    out, cols = W.shape
    group = scheme.group_for(cols)
    n_groups = cols // group
    dynamic = group < cols and not act_order  # fit each group when it starts
    if group < cols:  # a group never straddles two blocks
        block_size = max(group, block_size // group * group)

    H = hessian.to(W.device, torch.float32).clone()
    H.diagonal()[H.diagonal() == 0] = 1  # dead inputs: decoupled, rounded to nearest
    scale = W.new_empty(out, n_groups)
    zero = W.new_empty(out, n_groups) if scheme.kind == "int4" else None
    if not dynamic:  # per channel, or act_order's static groups: fit on the original W
        s, z = fit(scheme, W.reshape(out * n_groups, group))
        scale = s.view(out, n_groups)
        zero = z.view(out, n_groups) if z is not None else None
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(
        cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * H.diagonal().mean())
    U = _inverse_cholesky(H)
    col_group = (perm // group).tolist()  # the group of the column at each position

    codes = torch.empty(out, cols, dtype=torch.uint8 if scheme.kind == "int4" else torch.int8,
                        device=W.device)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1, U1 = W[:, start:end].clone(), U[start:end, start:end]
        E1 = torch.empty_like(W1)
        for i in range(end - start):
            g = col_group[start + i]
            if dynamic and (start + i) % group == 0:
                s, z = fit(scheme, W1[:, i:i + group])
                scale[:, g] = s[:, 0]
                if zero is not None:
                    zero[:, g] = z[:, 0]
            s = scale[:, g:g + 1]
            z = zero[:, g:g + 1] if zero is not None else None
            w = W1[:, i:i + 1]  # (out, 1)
            q = encode(scheme, w, s, z)
            codes[:, start + i] = q[:, 0]
            err = (w - decode(scheme, q, s, z)) / U1[i, i]  # (out, 1)
            W1[:, i:] -= err * U1[i:i + 1, i:]
            E1[:, i:i + 1] = err
        W[:, end:] -= E1 @ U[start:end, end:]  # the block's errors reach later columns at once

    codes = codes[:, torch.argsort(perm)]  # back to column order
    if scheme.kind == "int4":
        return QuantizedWeight(scheme, codes, scale, zero)
    return QuantizedWeight(scheme, codes, scale if scheme.group_size else scale.view(-1))


def _weight_of(name: str, module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if (not isinstance(weight, torch.Tensor) or not weight.is_floating_point()
            or weight.dim() != 2):
        raise LmforgeError(f"GPTQ needs full-precision projections, and {name} is a "
                           f"{type(module).__name__} without a float weight matrix: run GPTQ "
                           "on the unquantized, unadapted model")
    return weight


@torch.no_grad()
def gptq_weights(model: nn.Module, scheme: Scheme | str, batches: Sequence[torch.Tensor],
                 progress: bool = True, *, block_size: int = 128, damp: float = 0.01,
                 act_order: bool = False) -> dict[str, QuantizedWeight]:
    """GPTQ weights of every projection of the model's blocks, {projection name: weight}.

    Sequential, as in the paper: the inputs of block i are the outputs of block i − 1 with
    its quantized weights, so each block compensates the errors of the blocks before it.
    Per block, one pass over the calibration `batches` (token ids, (B, T) or (T,)) gathers
    each projection's Hessian H = 2XXᵀ / n through forward hooks (a fused projection, attn.qkv
    or a gated ffn.up, is one module with one input: one Hessian), every projection is
    quantized, and a second pass with the dequantized weights gives the next block's inputs;
    the block's own weights are then restored. Only one block's activations are held.

    The LM head (and any projection outside `model.layers`) is skipped, as in the paper's
    experiments: it stays in full precision. The model is left as it was.
    """
    scheme = parse_scheme(scheme)
    if getattr(model.config, "family", None) == "encoder_decoder":
        raise LmforgeError("GPTQ runs a single stack of blocks; this is an encoder-decoder "
                           "model: quantize it with method rtn")
    if not batches:
        raise LmforgeError("GPTQ needs calibration batches (token ids); got none")
    names = projections(model)
    inputs: Inputs = block_inputs(model, batches)
    result: dict[str, QuantizedWeight] = {}
    layers = model.layers
    for i, block in enumerate(tqdm(layers, desc=f"gptq {scheme.name}", unit="block",
                                   disable=not progress)):
        prefix = f"layers.{i}."
        mine = {n: m for n, m in names.items() if n.startswith(prefix)}
        weights = {n: _weight_of(n, m) for n, m in mine.items()}
        hessians = collect_hessians(block, mine, inputs)
        originals = {}
        for name, weight in weights.items():
            result[name] = gptq_quantize(weight, hessians[name], scheme, block_size, damp,
                                         act_order)
            originals[name] = weight.detach().clone()
            weight.copy_(result[name].dequantize().to(weight.dtype))
        if i < len(layers) - 1:
            inputs = run_block(block, inputs)
        for name, weight in weights.items():
            weight.copy_(originals[name])
    return result
