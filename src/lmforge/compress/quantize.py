"""Quantizing a model: every projection (`model/surgery.py`) replaced by a `QuantLinear`.

    >>> lm = lmforge.load("smollm2")
    >>> record = quantize_model(lm.model, "int4-g32")          # round to nearest
    >>> save_quantized("smollm2-int4", lm.model, lm.tokenizer, record)

What stays in floating point: the norms, every projection named in `skip` (by default the
untied `lm_head`, whose error lands directly on the logits, and the MoE router and its noise
projection, which choose the experts) and, unless `head=True`, the token embedding and with
it a tied LM head (`TiedHead` reads the embedding's matrix). `head=True` holds the embedding
in int8 per row (`compress/embedding.py`; a tied head then runs the packed int8 product over
it, as llama.cpp runs SmolLM2's Q8_0 token_embd) and quantizes an untied `lm_head` with the
scheme. It is off by default: the head's error lands on the logits; on SmolLM2 it is the
largest matrix (113 MB of fp32 of the 180 MB an int4 decode step reads).

Methods: "rtn" rounds each group of weights to the nearest grid point (`schemes.rtn`);
"gptq" (Frantar et al., 2022) takes the weights that `compress.gptq.gptq_weights` computed on
calibration data, `{projection name: QuantizedWeight}`, and only installs them here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from lmforge.compress.embedding import quantize_embedding
from lmforge.compress.linear import QuantLinear
from lmforge.compress.schemes import QuantizedWeight, Scheme, rtn
from lmforge.errors import LmforgeError
from lmforge.model.surgery import replace_linears, slices_of

METHODS = ("rtn", "gptq")
# an untied head's error lands on the logits; MoE routing decisions are sensitive to
# rounding (ST-MoE §2.2: the router runs in fp32)
SKIP = ("lm_head", "ffn.router", "ffn.noise")


@dataclass
class Quantization:
    """How a model was quantized: the `quantization` section of its config.json."""

    scheme: str
    method: str = "rtn"
    skip: list[str] = field(default_factory=lambda: list(SKIP))
    group_size: int | None = None
    calibration: dict | None = None  # gptq: {"file", "samples", "seq_len"}
    head: bool = False  # the embedding in int8 (and an untied lm_head in the scheme)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Quantization:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        known = sorted(cls.__dataclass_fields__)
        if unknown or "scheme" not in data:
            raise LmforgeError(f"the quantization section of config.json has unknown keys "
                               f"{unknown} or no scheme; it holds {known}")
        return cls(**data)


def skipped(name: str, skip: Sequence[str]) -> bool:
    """`name` matches a skip pattern whole or at its end after a dot ("lm_head", "attn.out")."""
    return any(fnmatchcase(name, p) or fnmatchcase(name, "*." + p) for p in skip)


def _quantized(name: str, module: nn.Module, scheme: Scheme,
               weights: Mapping[str, QuantizedWeight] | None) -> QuantLinear:
    if not isinstance(getattr(module, "weight", None), nn.Parameter):
        raise LmforgeError(f"{name} is a {type(module).__name__}, not a linear layer with a "
                           "float weight: quantize the base model first, then wrap it (LoRA)")
    if weights is None:
        weight = rtn(scheme, module.weight.detach())
    elif name not in weights:
        raise LmforgeError(f"the precomputed weights have no entry for {name}; compute them for "
                           "every projection quantize_model replaces (same skip patterns)")
    else:
        weight = weights[name]
    if weight.scheme != scheme or tuple(weight.codes.shape) != tuple(module.weight.shape):
        raise LmforgeError(f"{name}: the precomputed weight is {weight.scheme.name} of shape "
                           f"{tuple(weight.codes.shape)}, the layer needs {scheme.name} of "
                           f"{tuple(module.weight.shape)}")
    return QuantLinear.from_weight(weight, module.bias, slices_of(module))


def quantize_model(model: nn.Module, scheme: str | Scheme, method: str = "rtn",
                   weights: Mapping[str, QuantizedWeight] | None = None,
                   skip: Sequence[str] = SKIP, head: bool = False) -> Quantization:
    """Replace every projection of `model` not matched by `skip` by a `QuantLinear` of
    `scheme`, in place; the record to save beside it (`save_quantized`).

    method "rtn": round to nearest; "gptq": `weights` from `compress.gptq.gptq_weights`.
    head: also the token embedding, in int8 per row, with the tied head over it, and an
    untied `lm_head` in `scheme` (by round to nearest, unless `weights` holds it)."""
    scheme = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    if method not in METHODS:
        raise LmforgeError(f"unknown quantization method {method!r}; use {' or '.join(METHODS)}")
    if method == "gptq" and weights is None:
        raise LmforgeError("method 'gptq' installs precomputed weights: pass weights="
                           "lmforge.compress.gptq.gptq_weights(model, scheme, batches)")
    if method == "rtn" and weights is not None:
        raise LmforgeError("method 'rtn' computes its own weights; pass method='gptq' with "
                           "precomputed weights")
    if head:
        skip = [p for p in skip if p != "lm_head"]
        if not model.config.tie_embeddings and weights is not None and "lm_head" not in weights:
            weights = {**weights, "lm_head": rtn(scheme, model.lm_head.weight.detach())}
    replace_linears(model, lambda name, _: not skipped(name, skip),
                    lambda name, module: _quantized(name, module, scheme, weights))
    if head:
        quantize_embedding(model)
    return Quantization(scheme.name, method, list(skip), scheme.group_size, head=head)


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def install_empty(model: nn.Module, quantization: Quantization, names: set[str]) -> None:
    """Put empty `QuantLinear`s at `names` (a checkpoint's quantized projections) before its
    tensors load: the transform `compress.checkpoint` gives `api.build_model`."""
    scheme = Scheme.parse(quantization.scheme)
    replace_linears(model, lambda name, _: name in names,
                    lambda _, m: QuantLinear(scheme, m.in_features, m.out_features,
                                             m.bias is not None, slices_of(m)))
