"""Mixture-of-experts feed-forward layers: a gate picks, per token, which experts to run.

    g(x) = softmax(W_g · x)                          (n probabilities, one per expert)
    y(x) = Σ_{i ∈ S(x)} w_i(x) · E_i(x)              (E_i: a feed-forward layer, `ffn.py`)

Routing modes (`ModelConfig.moe_routing`):
- `soft`: S(x) = every expert, w = g(x): the classic mixture (Jacobs et al., 1991); it saves no
  compute.
- `topk`: noisy top-k gating (Shazeer et al., 2017, "Outrageously Large Neural Networks",
  eq. 3–5): in training H(x) = W_g·x + ε ⊙ softplus(W_noise·x), ε ~ N(0, 1) scaled by
  `moe_noise`; S(x) = the k largest, w = their probabilities renormalised to sum to 1
  (= softmax over the kept logits, eq. 3).
- `switch`: top-1 (Fedus et al., 2021, "Switch Transformers", eq. 1–2), w = g_i(x) not
  renormalised, so the main loss still trains the gate. In training each expert takes at most
  C = ⌈capacity_factor · N / n⌉ of the N tokens, first come first served in token order
  (deterministic); overflow tokens get expert output 0 (the residual carries them) and are
  counted as dropped.
Inference is dropless and noiseless: a token's output depends only on itself (and on its
batch only through the rounding of batched matmuls).

Auxiliary losses (training only, added to the objective by `moe_aux_loss`):
- load balancing (Switch, eq. 4): L_b = n · Σ_i f_i · P_i, with f_i the fraction of token
  assignments routed to expert i (top-1 for `soft` and `switch`, top-k / k for `topk`) and
  P_i the mean router probability of expert i; L_b = 1 under perfectly uniform routing.
- router z-loss (Zoph et al., 2022, "ST-MoE", eq. 5): L_z = mean_x (log Σ_i exp(W_g·x)_i)².

Dispatch: the N·k (token, expert) assignments are sorted by expert (stable, so token order
is kept inside each group), the tokens gathered once, each expert called once on its
contiguous group, and the weighted outputs scattered back with one `index_add_`. Every
expert is called, with zero rows if it got no token, so each expert's weights always receive
a gradient (zero when unused): DDP needs every parameter in the graph.

Why experts are an `nn.ModuleList` of `FeedForward` rather than stacked (n, d, f) tensors:
each expert stays an ordinary module reachable by name (`layers.1.ffn.experts.3.up`), so
LoRA and quantized layers replace its projections like any other, one expert can be swapped
or frozen, and checkpoints name each expert's tensors. The dispatch is already one matmul per
expert over its token group; stacking would only remove a Python loop over n (≈ 8) experts,
and a batched `bmm` over stacked weights needs groups padded to a common length, which wastes
compute when routing is uneven and inference is dropless.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.ffn import FeedForward
from lmforge.model.linear import Linear, linear

ROUTINGS = ("soft", "topk", "switch")
LAYER_CHOICES = ("all", "every_other")


def is_moe_layer(config: ModelConfig, layer: int) -> bool:
    """Whether block `layer` (of any stack) has a mixture-of-experts feed-forward layer.

    "all": every block; "every_other": blocks 1, 3, 5… (Switch and GShard alternate dense and
    expert layers, starting with a dense one); a list: exactly those blocks."""
    if not config.moe_experts:
        return False
    if config.moe_layers == "all":
        return True
    if config.moe_layers == "every_other":
        return layer % 2 == 1
    return layer in config.moe_layers


def validate_moe(config: ModelConfig) -> None:
    """Raise LmforgeError naming the first invalid `moe_*` field."""
    def bad(field: str, why: str) -> LmforgeError:
        return LmforgeError(f"config field {field}={getattr(config, field)!r}: {why}")

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(config.moe_experts) or config.moe_experts < 0:
        raise bad("moe_experts", "give the number of experts (0: dense feed-forward layers)")
    if config.moe_routing not in ROUTINGS:
        raise bad("moe_routing", f"use one of {ROUTINGS}")
    if not config.moe_experts:
        return
    if not is_int(config.moe_k) or not 1 <= config.moe_k <= config.moe_experts:
        raise bad("moe_k", f"experts per token must be between 1 and moe_experts="
                           f"{config.moe_experts}")
    if not is_int(config.moe_d_ff) or config.moe_d_ff <= 0:
        raise bad("moe_d_ff", "an expert's hidden width must be a positive integer")
    for name in ("moe_capacity_factor", "moe_aux_weight", "moe_z_weight", "moe_noise"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad(name, "must be a number >= 0")
    if config.moe_capacity_factor <= 0:
        raise bad("moe_capacity_factor", "must be > 0 (1.0: exactly N/n tokens per expert)")
    if not isinstance(config.moe_router_fp32, bool):
        raise bad("moe_router_fp32", "must be true or false")
    layers = config.moe_layers
    if isinstance(layers, str):
        if layers not in LAYER_CHOICES:
            raise bad("moe_layers", f"use {LAYER_CHOICES[0]!r}, {LAYER_CHOICES[1]!r} or a "
                                    "list of layer indices")
    elif (not isinstance(layers, list) or not layers or not all(map(is_int, layers))
          or len(set(layers)) != len(layers)
          or not all(0 <= i < config.n_layer for i in layers)):
        raise bad("moe_layers", f"a list must hold distinct layer indices in [0, "
                                f"{config.n_layer})")


def make_ffn(config: ModelConfig, layer: int) -> nn.Module:
    """The feed-forward layer of block `layer`: a MoE where `moe_layers` says so, else dense."""
    return MoE(config) if is_moe_layer(config, layer) else FeedForward(config)


def route(logits: torch.Tensor, routing: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts (N, k'), weights (N, k')) from router logits (N, n); k' = 1 for switch."""
    probs = logits.softmax(dim=-1)
    if routing == "switch":
        top, idx = probs.max(dim=-1, keepdim=True)
        return idx, top
    top, idx = probs.topk(k, dim=-1)
    return idx, top / top.sum(dim=-1, keepdim=True)


def dispatch(x: torch.Tensor, experts: nn.ModuleList, idx: torch.Tensor,
             weights: torch.Tensor, capacity: int | None) -> tuple[torch.Tensor, int]:
    """Σ_j weights[t, j] · E_{idx[t, j]}(x[t]) for every token t, and the number of dropped
    assignments: beyond `capacity` per expert (None: no limit), the later tokens get 0.

    x (N, d); idx, weights (N, k)."""
    N, k = idx.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert, in token order
    counts = torch.bincount(flat, minlength=len(experts))
    dropped = 0
    if capacity is not None:
        starts = counts.cumsum(0) - counts
        rank = torch.arange(len(order), device=x.device) - starts[flat[order]]
        keep = rank < capacity
        dropped = int((~keep).sum())
        order, counts = order[keep], counts.clamp(max=capacity)
    token = order // k
    groups = x.index_select(0, token).split(counts.tolist())
    ys = torch.cat([expert(group) for expert, group in zip(experts, groups, strict=True)])
    ys = ys.to(x.dtype) * weights.reshape(-1)[order, None].to(x.dtype)
    return x.new_zeros(N, x.shape[-1]).index_add_(0, token, ys), dropped


class Router(Linear):
    """The gate W_g (and the noise projection W_noise): a projection d → n experts, called
    as a module (so it can be replaced from outside), computed in fp32 when `fp32` even
    under bf16 weights or autocast: routing decisions are sensitive to rounding (ST-MoE §2.2)."""

    def __init__(self, d_model: int, n: int, fp32: bool) -> None:
        super().__init__(d_model, n, bias=False)
        self.fp32 = fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fp32:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return linear(x.float(), self.weight.float())


class MoE(nn.Module):
    """A mixture-of-experts feed-forward layer (see the module docstring).

    After each forward, `stats` holds detached tensors (utilisation (n,), dropped fraction,
    balance and z losses) and, in training, `aux_loss` the weighted auxiliary loss with its
    graph."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        n = config.moe_experts
        self.routing, self.k, self.n = config.moe_routing, config.moe_k, n
        self.capacity_factor = config.moe_capacity_factor
        self.noise_scale = config.moe_noise if config.moe_routing != "soft" else 0.0
        self.aux_weight, self.z_weight = config.moe_aux_weight, config.moe_z_weight
        self.router = Router(config.d_model, n, config.moe_router_fp32)
        if self.noise_scale > 0:
            self.noise = Router(config.d_model, n, config.moe_router_fp32)
        expert = dataclasses.replace(config, d_ff=config.moe_d_ff, moe_experts=0)
        self.experts = nn.ModuleList(FeedForward(expert) for _ in range(n))
        self.stats: dict[str, torch.Tensor] = {}
        self.aux_loss: torch.Tensor | None = None

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """W_g·x (N, n), plus Shazeer's learned noise ε ⊙ softplus(W_noise·x) in training."""
        logits = self.router(x)
        if self.training and self.noise_scale > 0:
            std = F.softplus(self.noise(x))
            logits = logits + torch.randn_like(logits) * std * self.noise_scale
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d): every token of the batch
        logits = self.router_logits(x)
        if self.routing == "soft":
            probs = logits.softmax(dim=-1)
            out = sum(probs[:, i, None].to(x.dtype) * e(x).to(x.dtype)
                      for i, e in enumerate(self.experts))
            idx, dropped = probs.argmax(dim=-1, keepdim=True), 0
        else:
            idx, weights = route(logits, self.routing, self.k)
            capacity = None
            if self.training and self.routing == "switch":
                capacity = math.ceil(self.capacity_factor * x.shape[0] / self.n)
            out, dropped = dispatch(x, self.experts, idx, weights, capacity)
        self._record(logits, idx, dropped)
        return out.reshape(shape)

    def _record(self, logits: torch.Tensor, idx: torch.Tensor, dropped: int) -> None:
        """Utilisation, dropped fraction and the auxiliary losses of this forward."""
        f = torch.bincount(idx.reshape(-1), minlength=self.n).float() / idx.numel()
        balance = self.n * (f * logits.softmax(dim=-1).mean(0)).sum()  # Switch eq. 4
        z = torch.logsumexp(logits, dim=-1).square().mean()  # ST-MoE eq. 5
        self.aux_loss = (self.aux_weight * balance + self.z_weight * z if self.training
                         else None)
        self.stats = {"utilisation": f, "dropped": torch.tensor(dropped / idx.numel()),
                      "balance_loss": balance.detach(), "z_loss": z.detach()}


def moe_modules(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor:
    """Σ over MoE layers of aux_weight · L_b + z_weight · L_z from the last training forward
    (0 for a dense model), to add to the objective's loss."""
    losses = [m.aux_loss for m in moe_modules(model) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else torch.zeros(())


def moe_stats(model: nn.Module) -> dict:
    """Metrics of the last forward for metrics.jsonl: mean balance and z losses and dropped
    fraction over MoE layers, and each layer's utilisation (fraction of assignments per
    expert). Empty for a dense model."""
    layers = {name.split(".")[1] if name.startswith("layers.") else name: m
              for name, m in model.named_modules() if isinstance(m, MoE) and m.stats}
    if not layers:
        return {}

    def mean(key: str) -> float:
        return sum(m.stats[key].item() for m in layers.values()) / len(layers)

    return {"moe_balance_loss": mean("balance_loss"), "moe_z_loss": mean("z_loss"),
            "moe_dropped": mean("dropped"),
            "moe_utilisation": {k: [round(v, 5) for v in m.stats["utilisation"].tolist()]
                                for k, m in layers.items()}}


def param_counts(config: ModelConfig) -> dict[str, int]:
    """Total parameters and parameters active per token (each with and without the token
    embeddings, position and segment tables and an untied head). Active counts the experts a
    token runs through: all n (soft), k (topk) or 1 (switch); the router and noise
    projections count as active."""
    from lmforge.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for name, p in model.named_parameters()
                if name.split(".")[0] in ("embed", "type_embed", "abs_position", "lm_head"))
    used = {"soft": config.moe_experts, "topk": config.moe_k, "switch": 1}[config.moe_routing]
    idle = sum(sum(p.numel() for e in m.experts[used:] for p in e.parameters())
               for m in moe_modules(model))
    return {"total": total, "active": total - idle, "total_no_embed": total - embed,
            "active_no_embed": total - idle - embed}
