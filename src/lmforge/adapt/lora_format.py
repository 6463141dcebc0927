"""LoRA adapters on disk, in PEFT's layout: the "lora" adapter method (`adapt/adapter.py`).

adapter_config.json carries PEFT's LoraConfig keys (peft_type "LORA", r, lora_alpha,
lora_dropout, target_modules, use_rslora, …) beside lmforge's section. The tensors of a Llama
model (one that `lmforge convert --to hf` writes) are named for the Hugging Face model of that
conversion, the fused projections split into PEFT's modules:

    ours: layers.3.attn.qkv.lora_A.q  (r, d)          lora_B.q  (rows of q, r)
    PEFT: base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight, ….lora_B.weight

and likewise attn.out → o_proj, ffn.up's gate and up → gate_proj, up_proj, ffn.down →
down_proj, an untied lm_head → lm_head. So `peft.PeftModel.from_pretrained(LlamaForCausalLM(
converted), DIR)` computes what lmforge does, and an adapter that peft trained on that model
loads here (each A and B is exactly one of ours: the fused projections are split by rows, no
arithmetic). Other families (BERT-style encoders, GPT-2, T5), which the conversion does not
write as Llama, keep lmforge's parameter names ("layers.3.attn.qkv.lora_A.q") and are read
back by lmforge only.

PEFT's options that change the computation and that lmforge does not implement (DoRA, trained
biases, modules_to_save, per-module ranks or alphas, LoRA on embeddings) are refused by name.

A classification head trained with the LoRA (`lmforge finetune --method lora --task seqcls`)
travels in the same directory, as prompt tuning's does: a "classifier" config section and
"classifier.*" tensors (`adapt/prompted.py`), which peft does not read.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.adapt.adapter import AdapterMethod, register_method
from lmforge.adapt.lora import LoraConfig, attach, lora_modules, unit_name
from lmforge.adapt.prompted import HEAD, apply_head, export_head
from lmforge.errors import LmforgeError
from lmforge.interop.hf import HF_NAMES, hf_config
from lmforge.model.config import ModelConfig
from lmforge.model.surgery import projections, slices_of

PEFT_PREFIX = "base_model.model."
# our projection → {its slice: the part of interop/hf.py's HF_NAMES it is}
_PARTS = {"attn.qkv": {"q": "q", "k": "k", "v": "v"}, "attn.out": {"all": "o"},
          "ffn.up": {"gate": "gate", "up": "up"}, "ffn.down": {"all": "down"}}


def peft_names(config: ModelConfig) -> dict[tuple[str, str], str] | None:
    """{(our projection, slice): the Hugging Face module} for a model that converts to a
    Llama directory; None for one that does not."""
    try:
        hf_config(config, None, torch.float32)
    except LmforgeError:
        return None
    names = {(f"layers.{i}.{ours}", s): HF_NAMES[part].format(i=i)
             for i in range(config.n_layer) for ours, parts in _PARTS.items()
             for s, part in parts.items()}
    if not config.tie_embeddings:
        names[("lm_head", "all")] = HF_NAMES["lm_head"]
    return names


def _model_names(model: nn.Module) -> dict[tuple[str, str], str] | None:
    config = getattr(model, "config", None)
    return peft_names(config) if isinstance(config, ModelConfig) else None


def _target_modules(units: list[tuple[str, str]], names: dict[tuple[str, str], str] | None,
                    n_layer: int) -> list[str]:
    """PEFT's target_modules: a short name ("q_proj") where every layer has it, else the
    modules' full names; lmforge's unit names outside the PEFT layout."""
    if names is None:
        return [unit_name(*u) for u in units]
    full = [names[u] for u in units]
    short = {n.rpartition(".")[2] for n in full}
    whole = {s for s in short
             if sum(n.rpartition(".")[2] == s for n in full) == n_layer and s != "lm_head"}
    return sorted(whole) + [n for n in full if n.rpartition(".")[2] not in whole]


def export_lora(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    modules = lora_modules(model)
    if not modules:
        raise LmforgeError("this model has no LoRA layers to save; attach_lora first")
    configs = {m.config for m in modules.values()}
    if len(configs) > 1:
        raise LmforgeError("the model's LoRA layers have different settings; PEFT's format "
                           "holds one r, alpha and dropout per adapter")
    config = configs.pop()
    names = _model_names(model)
    units = [(name, p) for name, m in modules.items() for p in m.parts]
    tensors = {}
    for name, module in modules.items():
        for p in module.parts:
            for kind, store in (("lora_A", module.lora_A), ("lora_B", module.lora_B)):
                key = (f"{PEFT_PREFIX}{names[(name, p)]}.{kind}.weight" if names is not None
                       else f"{name}.{kind}.{p}")
                tensors[key] = store[p]
    n_layer = model.config.n_layer if names is not None else 0
    keys = {"peft_type": "LORA", "task_type": "CAUSAL_LM" if names is not None else None,
            "r": config.r,
            "lora_alpha": int(config.alpha) if float(config.alpha).is_integer() else config.alpha,
            "lora_dropout": config.dropout,
            "target_modules": _target_modules(units, names, n_layer),
            "use_rslora": config.use_rslora, "bias": "none", "use_dora": False,
            "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
            "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}
    head_config, head = export_head(model)  # a classification head trained with it, if any
    return {**keys, **head_config}, {**tensors, **head}


def _refuse_unsupported(config: dict) -> None:
    unsupported = {"use_dora": False, "bias": "none", "lora_bias": False}
    for key, default in unsupported.items():
        if config.get(key, default) not in (default, None):
            raise LmforgeError(f"this adapter sets {key} = {config[key]!r}, which lmforge's LoRA "
                               f"does not implement (only {key} = {default!r})")
    for key in ("modules_to_save", "rank_pattern", "alpha_pattern", "layer_replication"):
        if config.get(key):
            raise LmforgeError(f"this adapter sets {key} = {config[key]!r}, which lmforge's LoRA "
                               "does not implement; save it without")


def _parse_key(key: str, by_module: dict[str, tuple[str, str]] | None
               ) -> tuple[str, str, str] | None:
    """(projection, slice, "lora_A" | "lora_B") of a tensor name; None when not ours."""
    if by_module is not None and key.startswith(PEFT_PREFIX) and key.endswith(".weight"):
        module, _, kind = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rpartition(".")
        if module in by_module and kind in ("lora_A", "lora_B"):
            return (*by_module[module], kind)
        return None
    name, _, rest = key.partition(".lora_")
    kind, _, part = rest.partition(".")
    return (name, part, "lora_" + kind) if kind in ("A", "B") and part else None


def apply_lora(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    _refuse_unsupported(config)
    names = _model_names(model)
    by_module = {hf: unit for unit, hf in names.items()} if names is not None else None
    found: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    head = {k: v for k, v in tensors.items() if k.startswith(f"{HEAD}.")}
    for key, tensor in tensors.items():
        if key in head:
            continue
        parsed = _parse_key(key, by_module)
        if parsed is None:
            raise LmforgeError(f"the adapter's tensor {key!r} is not a LoRA matrix of this "
                               "model's projections; was it trained on another architecture?")
        found.setdefault(parsed[:2], {})[parsed[2]] = tensor
    lacking = [unit_name(*u) for u, pair in found.items() if len(pair) != 2]
    if lacking:
        raise LmforgeError(f"the adapter has lora_A without lora_B (or the reverse) for "
                           f"{lacking[:3]}; the file is incomplete")
    chosen: dict[str, tuple[str, ...]] = {}
    for name, part in found:
        chosen[name] = (*chosen.get(name, ()), part)
    lora = LoraConfig(r=int(config["r"]), alpha=float(config["lora_alpha"]),
                      dropout=float(config.get("lora_dropout") or 0.0),
                      targets=tuple(unit_name(*u) for u in found),
                      use_rslora=bool(config.get("use_rslora", False)))
    check_shapes(model, found, lora.r)
    attach(model, chosen, lora)
    modules = lora_modules(model)
    with torch.no_grad():
        for (name, part), pair in found.items():
            for kind, tensor in pair.items():
                getattr(modules[name], kind)[part].copy_(tensor)
    apply_head(model, config, head)


def check_shapes(model: nn.Module, found: dict[tuple[str, str], dict[str, torch.Tensor]],
                 r: int) -> None:
    """Every A is (r, d_in) and every B (rows of its slice, r) of a projection of `model`."""
    found_projections = projections(model)
    for (name, part), pair in found.items():
        module = found_projections.get(name)
        if module is None or part not in slices_of(module):
            raise LmforgeError(f"the adapter has LoRA matrices for {unit_name(name, part)}, "
                               "which this model lacks; it was trained on another architecture")
        rows = slices_of(module)[part]
        want = {"lora_A": (r, module.in_features), "lora_B": (rows.stop - rows.start, r)}
        for kind, tensor in pair.items():
            if tuple(tensor.shape) != want[kind]:
                raise LmforgeError(
                    f"the adapter's {kind} of {unit_name(name, part)} has shape "
                    f"{tuple(tensor.shape)}, the model needs {want[kind]} (r = {r}); it was "
                    "trained on another architecture or with another rank")


register_method(AdapterMethod("lora", export_lora, apply_lora, peft_type="LORA"))
