"""Llama-style weights: our fused state dict ↔ one tensor per projection, under any project's names.

Every converter goes through the same unfused, project-neutral vocabulary ("parts"):

    embed.weight  norm.weight  lm_head.weight
    layers.{i}.{attn_norm|q|k|v|o|ffn_norm|gate|up|down}.{weight|bias}

`fuse` turns parts into our state dict (`attn.qkv` rows = [q; k; v], gated `ffn.up` rows =
[gate; up]); `split` undoes it. A converter only supplies a table from part to its own name
template (`"q": "model.layers.{i}.self_attn.q_proj"`), used by `gather` (theirs → parts) and
`scatter` (parts → theirs). Renaming and fusing are exact: no arithmetic touches a weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig

GLOBAL_PARTS = ("embed", "norm", "lm_head")
LAYER_PARTS = ("attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down")
LINEAR_PARTS = ("q", "k", "v", "o", "gate", "up", "down")  # the parts that carry a bias

# our name of each layer module, and the parts fused into it (in row order)
_FUSED = {
    "attn_norm": ("attn_norm",), "attn.qkv": ("q", "k", "v"), "attn.out": ("o",),
    "ffn_norm": ("ffn_norm",), "ffn.up": ("gate", "up"), "ffn.down": ("down",),
}


def fused_modules(config: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(our module name, its parts in row order) for one layer; no gate when not gated."""
    return [(ours, tuple(p for p in pieces if p != "gate" or config.gated))
            for ours, pieces in _FUSED.items()]


def part_names(config: ModelConfig) -> list[str]:
    """Every part a Llama-style model of `config` has (biases when config.bias)."""
    names = ["embed.weight", "norm.weight"] + ([] if config.tie_embeddings else ["lm_head.weight"])
    for i in range(config.n_layer):
        for part in LAYER_PARTS:
            if part == "gate" and not config.gated:
                continue
            names.append(f"layers.{i}.{part}.weight")
            if config.bias and part in LINEAR_PARTS:
                names.append(f"layers.{i}.{part}.bias")
    return names


def source_name(table: Mapping[str, str], part: str) -> str:
    """'layers.3.q.weight' → table['q'].format(i=3) + '.weight'."""
    pieces = part.split(".")
    if pieces[0] == "layers":
        return table[pieces[2]].format(i=int(pieces[1])) + "." + pieces[3]
    return table[pieces[0]] + "." + pieces[1]


def gather(config: ModelConfig, table: Mapping[str, str], tensors: Mapping[str, torch.Tensor],
           where: str, ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Parts from a source state dict; missing weights and unknown tensors are errors.

    A missing bias is allowed (a source may have attention biases but no MLP biases); `fuse`
    fills it with zeros. Names ending in one of `ignore` are dropped silently.
    """
    parts, used = {}, set()
    for part in part_names(config):
        name = source_name(table, part)
        if name in tensors:
            parts[part] = tensors[name]
            used.add(name)
        elif part.endswith(".weight"):
            raise LmforgeError(f"{where} has no tensor {name!r}, which a Llama model with "
                               f"{config.n_layer} layers needs; the file is incomplete")
    extra = sorted(n for n in tensors if n not in used and not n.endswith(ignore))
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise LmforgeError(f"{where} has tensors lmforge does not know how to use: "
                           f"{extra[:5]}{more}; this variant of the architecture is not supported")
    return parts


def scatter(table: Mapping[str, str], parts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A source state dict from parts (the inverse of `gather`)."""
    return {source_name(table, part): t for part, t in parts.items()}


def _rows(config: ModelConfig, part: str) -> int:
    c = config
    return {"q": c.n_head * c.head_dim, "k": c.n_kv_head * c.head_dim,
            "v": c.n_kv_head * c.head_dim, "o": c.d_model, "gate": c.d_ff, "up": c.d_ff,
            "down": c.d_model, "attn_norm": c.d_model, "ffn_norm": c.d_model}[part]


def fuse(config: ModelConfig, parts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from parts; absent biases become zeros when config.bias."""
    out = {"embed.weight": parts["embed.weight"], "norm.weight": parts["norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = parts["lm_head.weight"]
    for i in range(config.n_layer):
        for ours, pieces in fused_modules(config):
            weights = [parts[f"layers.{i}.{p}.weight"] for p in pieces]
            out[f"layers.{i}.{ours}.weight"] = torch.cat(weights) if len(weights) > 1 \
                else weights[0]
            if config.bias and pieces[0] in LINEAR_PARTS:
                biases = [parts.get(f"layers.{i}.{p}.bias") for p in pieces]
                biases = [torch.zeros(_rows(config, p)) if b is None else b
                          for p, b in zip(pieces, biases, strict=True)]
                out[f"layers.{i}.{ours}.bias"] = torch.cat(biases)
    return out


def split(config: ModelConfig, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parts from our state dict (the inverse of `fuse`); the pieces are views, not copies."""
    check_state_dict(config, state_dict, "the state dict")
    parts = {n: state_dict[n] for n in ("embed.weight", "norm.weight", "lm_head.weight")
             if n in state_dict}
    for i in range(config.n_layer):
        for ours, pieces in fused_modules(config):
            sizes = [_rows(config, p) for p in pieces]
            for suffix in ("weight", "bias"):
                name = f"layers.{i}.{ours}.{suffix}"
                if name not in state_dict:
                    continue
                chunks = state_dict[name].split(sizes)
                for p, chunk in zip(pieces, chunks, strict=True):
                    parts[f"layers.{i}.{p}.{suffix}"] = chunk
    return parts


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in our state dict for `config`, from a weightless model
    (so every family and component choice is covered by the model code itself)."""
    from lmforge.model.transformer import Transformer

    with torch.device("meta"):
        return {n: tuple(t.shape) for n, t in Transformer(config).state_dict().items()}


def check_state_dict(config: ModelConfig, state_dict: Mapping[str, torch.Tensor], where: str
                     ) -> None:
    """Raise LmforgeError unless `state_dict` has exactly the names and shapes `config` implies."""
    want = expected_shapes(config)
    missing = [n for n in want if n not in state_dict]
    extra = [n for n in state_dict if n not in want]
    wrong = [f"{n} {tuple(state_dict[n].shape)} (expected {want[n]})"
             for n in want if n in state_dict and tuple(state_dict[n].shape) != want[n]]
    for problem, names in (("lacks", missing), ("has unexpected", extra), ("has shapes", wrong)):
        if names:
            raise LmforgeError(f"{where} {problem} {names[:5]}"
                               f"{' …' if len(names) > 5 else ''}; it does not match its config")


class TensorSource:
    """A checkpoint's tensors, read by a converter through `take`; `finish` then refuses any
    tensor no converter used, so an unknown variant is an error, never silently dropped."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], prefix: str, where: str,
                 model: str) -> None:
        self.tensors, self.prefix, self.where, self.model = tensors, prefix, where, model
        self.used: set[str] = set()

    def take(self, name: str) -> torch.Tensor:
        full = self.prefix + name
        if full not in self.tensors:
            raise LmforgeError(f"{self.where} has no tensor {full!r}, which this {self.model} "
                               "model needs; the file is incomplete")
        self.used.add(full)
        return self.tensors[full]

    def finish(self, config: ModelConfig, out: dict[str, torch.Tensor],
               ignored: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        """Check that every tensor was used (or is `ignored`) and `out` fits `config`."""
        extra = sorted(n for n in self.tensors
                       if n not in self.used and not ignored(n.removeprefix(self.prefix)))
        if extra:
            raise LmforgeError(f"{self.where} has tensors lmforge does not know how to use: "
                               f"{extra[:5]}{' …' if len(extra) > 5 else ''}; this "
                               f"{self.model} variant is not supported")
        check_state_dict(config, out, self.where)
        return out
