"""Module surgery from outside the model: the one way adapters and quantized layers replace
projections (`replace_linears`).

A projection is any `nn.Linear` (lmforge's `model.linear.Linear` included) or any module
that declares `slices`, the named row ranges of its output: a replacement that keeps
`slices` can be replaced again (a LoRA wrapper over a quantized layer). Fused projections
name their parts, so a wrapper can act on some of them only:

    layers.N.attn.qkv          q, k, v        (rows [q; k; v], see model/attention.py)
    layers.N.ffn.up            gate, up       (gated MLPs; a plain MLP's up is "all")
    layers.N.cross_attn.kv     k, v           (encoder-decoder decoder blocks)
    layers.N.ffn.experts.E.up  gate, up       (MoE experts; the gate `ffn.router` is "all")
    every other projection     all            (attn.out, ffn.down, cross_attn.q, lm_head…)

LoRA on q and v only (PEFT's target_modules=["q_proj", "v_proj"]) is a predicate that picks
`attn.qkv` and a factory whose wrapper adds its low-rank update to `module.slices["q"]` and
`module.slices["v"]` only. The tied LM head (`model/heads.TiedHead`) has no matrix of its own
and is not a projection here: replace `model.lm_head` itself.

Signatures:
    predicate(name, module) -> bool         name: the dotted path ("layers.3.attn.qkv")
    factory(name, module) -> nn.Module      the replacement, put at `name`
The walk does not enter a projection (chosen or not): a wrapper that holds the original
counts as one projection, and its base is not wrapped again (quantize first, then wrap).
A predicate that matches nothing is an error (a misspelled target would otherwise train or
quantize nothing, silently); pass `missing_ok=True` where an empty match is expected.

On a model built on the meta device (`api.build_model(…, transforms=[…])`) the factory runs
under `torch.device("meta")`: replacements allocate no memory, and the checkpoint's tensors
are then assigned to the new modules' parameters and buffers by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.linear import unpack_all

Predicate = Callable[[str, nn.Module], bool]
Factory = Callable[[str, nn.Module], nn.Module]


def is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or hasattr(module, "slices")


def slices_of(module: nn.Module) -> dict[str, slice]:
    """The named output row ranges of a projection ("all" for an `nn.Linear` without any)."""
    return getattr(module, "slices", None) or {"all": slice(0, module.out_features)}


def projections(model: nn.Module) -> dict[str, nn.Module]:
    """The projections of `model` by name, in module order; one inside another (the base
    layer a wrapper holds) is left out: surgery sees the outer one."""
    found: dict[str, nn.Module] = {}
    inside = None  # the name prefix of the last projection's subtree
    for name, module in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue  # named_modules is pre-order: a subtree's names follow its root's
        if name and is_projection(module):
            found[name], inside = module, name + "."
    return found


def replace_linears(model: nn.Module, predicate: Predicate, factory: Factory, *,
                    missing_ok: bool = False) -> dict[str, nn.Module]:
    """Replace every projection for which `predicate(name, module)` holds by
    `factory(name, module)`; {name: replacement} of what was replaced, in module order.

    Packed inference copies (`model/linear.py`) of the replaced modules and of their
    replacements are dropped: a wrapper may merge into the weight it holds.
    """
    candidates = projections(model)
    targets = {n: m for n, m in candidates.items() if predicate(n, m)}
    if not targets and not missing_ok:
        names = ", ".join(f"{n} ({'/'.join(slices_of(m))})"
                          for n, m in list(candidates.items())[:6])
        raise LmforgeError(f"no projection matched the predicate; projections are named like "
                           f"{names or 'nothing: the model has none'}")
    replaced = {}
    for name, module in targets.items():
        new = factory(name, module)
        if not isinstance(new, nn.Module):
            raise LmforgeError(f"the factory returned {type(new).__name__} for {name}; it must "
                               "return an nn.Module")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        unpack_all(module)
        unpack_all(new)
        replaced[name] = new
    return replaced
