"""LoRA: low-rank updates of frozen projections (Hu et al., 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

A wrapped projection computes, on the output rows of each targeted slice s,

    y_s = W_s·x + b_s + (α/r)·B_s·A_s·dropout(x)        A_s: (r, d_in), B_s: (d_out_s, r)

and W·x + b elsewhere. A_s starts Kaiming-uniform and B_s at zero, so a fresh adapter changes
no output (section 4.1 of the paper); `use_rslora` scales by α/√r instead (Kalajdzievski,
2023), as PEFT's option of that name. One dropout mask on x serves every slice of a fused
projection (PEFT draws one per unfused q_proj, v_proj: the same distribution).

Targets are names of slices of projections (`model/surgery.py`): "layers.3.attn.qkv.q" is the
q rows of the fused qkv, and a projection with one slice is named by itself
("layers.3.attn.out"). A target is an fnmatch pattern that matches a name whole or at its end
after a dot ("attn.qkv.q" matches every layer's; "encoder.*" the encoder's projections only);
a pattern that names a projection takes all its slices ("attn.qkv": q, k and v). PEFT's names
for Llama modules are accepted as aliases:

    q_proj k_proj v_proj → attn.qkv.{q,k,v}     o_proj → attn.out      down_proj → ffn.down
    gate_proj up_proj    → ffn.up.{gate,up}     all-linear → every projection in the layers

A pattern that matches nothing is an error (a misspelled target would train nothing).

`attach_lora` wraps the projections and freezes everything else; `merge_lora` writes (α/r)·B·A
into the base weights (no cost at inference), `unmerge_lora` subtracts it again (the base
comes back within fp32 rounding; `remove_lora` before merging gives it back bit for bit).
Saving and loading, in PEFT's layout, is `adapt/lora_format.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.surgery import projections, replace_linears, slices_of

PEFT_ALIASES = {"q_proj": "attn.qkv.q", "k_proj": "attn.qkv.k", "v_proj": "attn.qkv.v",
                "o_proj": "attn.out", "gate_proj": "ffn.up.gate", "up_proj": "ffn.up.up",
                "down_proj": "ffn.down", "all-linear": "layers.*"}
# the parameters attach_lora adds, as `train.trainable` patterns
TRAINABLE_PATTERNS = ("*.lora_A.*", "*.lora_B.*")


@dataclass(frozen=True)
class LoraConfig:
    """Rank r, scale α (the update is multiplied by α/r), dropout on the update's input, and
    the target patterns (module docstring)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise LmforgeError(f"LoRA rank r = {self.r}; it must be a positive integer")
        if not 0 <= self.dropout < 1:
            raise LmforgeError(f"LoRA dropout = {self.dropout}; it must be in [0, 1)")
        if not self.targets:
            raise LmforgeError("LoRA needs at least one target, e.g. targets = "
                               "[\"q_proj\", \"v_proj\"]")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def unit_name(projection: str, part: str) -> str:
    """The target name of slice `part` of `projection` (a one-slice projection: its name)."""
    return projection if part == "all" else f"{projection}.{part}"


class LoraLinear(nn.Module):
    """A projection plus (α/r)·B_s·A_s on the output rows of each slice s in `parts`.

    It keeps the base's `slices`, `in_features` and `out_features`, so it is a projection to
    `replace_linears` (the walk does not wrap `base` again)."""

    def __init__(self, base: nn.Module, parts: tuple[str, ...], config: LoraConfig) -> None:
        super().__init__()
        self.base, self.parts, self.config = base, parts, config
        self.slices = slices_of(base)
        self.in_features, self.out_features = base.in_features, base.out_features
        # the base's floating-point dtype and device (a quantized base: its scales')
        weight = next(t for t in (*base.parameters(), *base.buffers()) if t.is_floating_point())
        kw = dict(device=weight.device, dtype=weight.dtype)
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(config.r, self.in_features,
                                                                    **kw)) for p in parts})
        self.lora_B = nn.ParameterDict({p: nn.Parameter(torch.zeros(self.rows(p), config.r,
                                                                     **kw)) for p in parts})
        if weight.device.type != "meta":
            for a in self.lora_A.values():  # nn.Linear's (and PEFT's) initialisation
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.merged = False

    def rows(self, part: str) -> int:
        s = self.slices[part]
        return s.stop - s.start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = self.dropout(x)
        pieces = []  # the slices cover the rows in order: rebuild y from them (no in-place
        for p, rows in self.slices.items():  # write: y may come from an autograd Function)
            piece = y[..., rows]
            if p in self.parts:  # (…, d_in) → (…, r) → (…, rows_p)
                update = F.linear(F.linear(h, self.lora_A[p]), self.lora_B[p])
                piece = piece + self.config.scale * update.to(y.dtype)
            pieces.append(piece)
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    def delta(self, part: str) -> torch.Tensor:
        """(α/r)·B·A of one slice, (rows, d_in), computed in fp32."""
        return self.config.scale * (self.lora_B[part].float() @ self.lora_A[part].float())

    @torch.no_grad()
    def merge(self, sign: int = 1) -> None:
        """W_s += sign·(α/r)·B_s·A_s for every slice (sign −1: unmerge)."""
        weight = getattr(self.base, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise LmforgeError(f"cannot merge LoRA into a {type(self.base).__name__}: it has no "
                               "floating-point weight (a quantized base); keep it unmerged")
        for p in self.parts:
            rows = weight[self.slices[p]]
            # in place: the version counter moves, so a packed copy is made again
            rows.copy_((rows.float() + sign * self.delta(p)).to(weight.dtype))
        self.merged = sign > 0


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def expand_targets(targets: tuple[str, ...]) -> list[str]:
    return [PEFT_ALIASES.get(t, t) for t in targets]


def _matches(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) or fnmatchcase(name, "*." + pattern)


def resolve_targets(model: nn.Module, targets: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """{projection name: its targeted slices} for `targets` (module docstring)."""
    found = projections(model)
    chosen: dict[str, set[str]] = {}
    for target, pattern in zip(targets, expand_targets(targets), strict=True):
        hits = 0
        for name, module in found.items():
            whole = _matches(name, pattern)
            parts = {p for p in slices_of(module) if whole or _matches(unit_name(name, p), pattern)}
            if parts:
                hits += 1
                chosen.setdefault(name, set()).update(parts)
        if not hits:
            examples = [unit_name(n, p) for n, m in list(found.items())[:5] for p in slices_of(m)]
            raise LmforgeError(
                f"LoRA target {target!r} matches no projection; they are named like "
                f"{', '.join(examples[:8])} (or PEFT's {', '.join(list(PEFT_ALIASES)[:7])})")
    # in module order, each projection's slices in row order
    return {n: tuple(p for p in slices_of(m) if p in chosen[n])
            for n, m in found.items() if n in chosen}


def attach(model: nn.Module, chosen: Mapping[str, tuple[str, ...]], config: LoraConfig
           ) -> list[str]:
    """Wrap the projections of `chosen` ({name: slices}); freeze every other parameter; the
    names of the new (trainable) parameters."""
    if lora_modules(model):
        raise LmforgeError("this model already has LoRA layers; remove_lora(model) first "
                           "(or merge them with remove_lora(model, merge=True))")
    for param in model.parameters():
        param.requires_grad_(False)
    replace_linears(model, lambda name, _: name in chosen,
                    lambda name, module: LoraLinear(module, chosen[name], config))
    return [n for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def attach_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Add LoRA to the projections `config.targets` names and freeze the rest of `model`;
    the names of the new parameters, the only trainable ones (`TRAINABLE_PATTERNS` selects
    them in `train.trainable`)."""
    return attach(model, resolve_targets(model, config.targets), config)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA parameters of `model` under its own names ("layers.0.attn.qkv.lora_A.q")."""
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def _require(model: nn.Module) -> dict[str, LoraLinear]:
    found = lora_modules(model)
    if not found:
        raise LmforgeError("this model has no LoRA layers; attach_lora or load an adapter first")
    return found


def merge_lora(model: nn.Module) -> None:
    """Write every update into its base weight: W ← W + (α/r)·B·A (idempotent)."""
    for module in _require(model).values():
        if not module.merged:
            module.merge(+1)


def unmerge_lora(model: nn.Module) -> None:
    """Take the updates out of the base weights again: W ← W − (α/r)·B·A (idempotent)."""
    for module in _require(model).values():
        if module.merged:
            module.merge(-1)


def remove_lora(model: nn.Module, merge: bool = False) -> None:
    """Put the base projections back; with `merge`, with the updates written into them
    (PEFT's merge_and_unload); without, unmerged first. Parameters stay frozen."""
    for module in _require(model).values():
        if merge != module.merged:
            module.merge(+1 if merge else -1)
    replace_linears(model, lambda _, m: isinstance(m, LoraLinear), lambda _, m: m.base)
