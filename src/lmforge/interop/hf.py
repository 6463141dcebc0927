"""Hugging Face Llama directories ↔ ModelConfig + our state dict.

A Hugging Face model directory holds `config.json` (with "architectures"), the weights as
`model.safetensors` or shards listed in `model.safetensors.index.json`, and the tokenizer
files. `LlamaForCausalLM` and `MistralForCausalLM` (the same computation, plus a sliding
window) are read; their q_proj/k_proj rows already use the rotate-half RoPE convention that
lmforge uses, so the weights map by name only:

    model.embed_tokens             embed           model.norm                     norm
    model.layers.{i}.input_layernorm       attn_norm   ….self_attn.{q,k,v,o}_proj      q k v o
    model.layers.{i}.post_attention_layernorm  ffn_norm  ….mlp.{gate,up,down}_proj    gate up down
    lm_head                        lm_head (absent when tie_word_embeddings)

`save_hf` writes the same layout back, with a config.json that transformers'
`LlamaForCausalLM` loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop import layout
from lmforge.interop.tensors import (
    dtype_name,
    load_safetensors,
    parse_dtype,
    refuse_pickles,
    save_safetensors,
)
from lmforge.interop.threads import single_threaded
from lmforge.io import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.tokenizers.base import Tokenizer

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

HF_NAMES = {
    "embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head",
    "attn_norm": "model.layers.{i}.input_layernorm",
    "q": "model.layers.{i}.self_attn.q_proj", "k": "model.layers.{i}.self_attn.k_proj",
    "v": "model.layers.{i}.self_attn.v_proj", "o": "model.layers.{i}.self_attn.o_proj",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "gate": "model.layers.{i}.mlp.gate_proj", "up": "model.layers.{i}.mlp.up_proj",
    "down": "model.layers.{i}.mlp.down_proj",
}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path} is not valid JSON ({exc})") from None


# transformers' YaRN settings that model/rope_scaling.py computes; other values are refused
YARN_DEFAULTS = {"beta_fast": 32, "beta_slow": 1, "truncate": True, "partial_rotary_factor": 1.0}


def _rope_fields(hf: dict, where: str) -> dict:
    """ModelConfig's RoPE fields (theta, and the scaling of model/rope_scaling.py) from a HF
    config: "default", "linear" and "yarn" with YaRN's default ramp (β 32/1, attention factor
    0.1·ln s + 1). The trained window is `original_max_position_embeddings`, else
    max_position_embeddings / factor."""
    # transformers 5 nests RoPE settings in "rope_parameters"; 4.x has rope_theta + rope_scaling
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    fields = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    if kind == "default":
        return fields
    if kind not in ("linear", "yarn"):
        hint = (" (a static NTK-aware scaling is `--rope-scaling ntk:S` at load time)"
                if kind == "dynamic" else "")
        raise LmforgeError(f"{where}: RoPE scaling of type {kind!r} is not supported; "
                           f"supported: linear, yarn{hint}")
    longest = int(hf.get("max_position_embeddings", 2048))
    original = params.get("original_max_position_embeddings")
    factor = float(params.get("factor") or longest / (original or longest))
    odd = {k: params[k] for k in ("attention_factor", "mscale", "mscale_all_dim")
           if params.get(k) is not None}
    odd |= {k: params[k] for k, v in YARN_DEFAULTS.items() if params.get(k, v) != v}
    if kind == "yarn" and odd:
        raise LmforgeError(f"{where}: YaRN with {odd} is not supported; lmforge computes "
                           f"YaRN with transformers' defaults {YARN_DEFAULTS}")
    return fields | {"rope_scaling": kind, "rope_factor": factor,
                     "rope_original_max_seq_len": int(original or round(longest / factor))}


def _rope_parameters(config: ModelConfig) -> dict:
    """The HF RoPE scaling of a scaled config (the inverse of `_rope_fields`)."""
    return {"rope_type": config.rope_scaling, "factor": config.rope_factor,
            "original_max_position_embeddings": config.rope_original_max_seq_len,
            "rope_theta": config.rope_theta}


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face Llama/Mistral config.json dict."""
    # bert.py and gpt2.py import this module, so their names are imported here
    from lmforge.interop.bert import ARCHITECTURES as BERT
    from lmforge.interop.gpt2 import ARCHITECTURES as GPT2
    from lmforge.interop.t5 import ARCHITECTURES as T5

    archs = hf.get("architectures") or []
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        others = BERT + GPT2 + T5
        raise LmforgeError(f"{where}: architecture {archs[0] if archs else None!r} is not "
                           f"supported; supported: {', '.join(SUPPORTED_ARCHITECTURES + others)}"
                           + (" (read through lmforge.interop.load.load_weights)"
                              if archs and archs[0] in others else ""))
    if hf.get("hidden_act", "silu") != "silu":
        raise LmforgeError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported "
                           "for Llama models (expected 'silu')")
    try:
        n_head, d_model = int(hf["num_attention_heads"]), int(hf["hidden_size"])
        max_seq_len = int(hf.get("max_position_embeddings", 2048))
        # Mistral's sliding window changes nothing for sequences within it: cap the length there
        if hf.get("sliding_window"):
            max_seq_len = min(max_seq_len, int(hf["sliding_window"]))
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]), d_model=d_model,
            n_layer=int(hf["num_hidden_layers"]), n_head=n_head,
            n_kv_head=int(hf.get("num_key_value_heads") or n_head),
            head_dim=int(hf.get("head_dim") or d_model // n_head),
            d_ff=int(hf["intermediate_size"]), family="decoder", norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp="swiglu", position="rope",
            **_rope_fields(hf, where), max_seq_len=max_seq_len,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bias=bool(hf.get("attention_bias") or hf.get("mlp_bias")),
        )
    except KeyError as exc:
        raise LmforgeError(f"{where} lacks the key {exc.args[0]!r}") from None


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory: the shards of the index, or *.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise LmforgeError(f"{index} lists shards that are not there: {missing[:3]}")
        return [directory / s for s in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        refuse_pickles(directory)
    return files


@single_threaded()
def load_hf(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, our float32 state dict, the raw config.json dict) of a HF Llama directory."""
    d = Path(directory)
    hf = read_json(d / "config.json")
    config = config_from_hf(hf, str(d / "config.json"))
    tensors = load_safetensors(weight_files(d))
    # checkpoints of tied models sometimes store lm_head anyway; old ones store RoPE buffers
    ignore = ("rotary_emb.inv_freq",) + (("lm_head.weight",) if config.tie_embeddings else ())
    parts = layout.gather(config, HF_NAMES, tensors, str(d), ignore=ignore)
    state_dict = layout.fuse(config, parts)
    layout.check_state_dict(config, state_dict, str(d))
    return config, state_dict, hf


def hf_config(config: ModelConfig, tokenizer: Tokenizer | None, dtype: torch.dtype) -> dict:
    """The config.json dict of `config` for transformers' LlamaForCausalLM."""
    if config.moe_experts:
        # the layout knows only dense feed-forward tensors: the experts would vanish silently
        raise LmforgeError(
            f"this model has mixture-of-experts layers (moe_experts={config.moe_experts}); "
            "Hugging Face's Llama, GPT-2, BERT and T5 classes have no MoE layers, so it "
            "cannot be exported to them; keep it in the lmforge checkpoint format "
            "(`lmforge convert --to lmforge`), which stores the experts and the router")
    unsupported = {k: v for k, v in (("family", "decoder"), ("norm", "rmsnorm"),
                                     ("mlp", "swiglu"), ("position", "rope"))
                   if getattr(config, k) != v}
    # transformers has no static NTK-aware RoPE, and plain RoPE run past its window (factor > 1
    # without scaling) would be read back as a trained window: refused, not written as plain
    if config.rope_scaling == "ntk" or (config.rope_scaling == "none"
                                         and config.rope_factor != 1):
        unsupported["rope_scaling"] = config.rope_scaling
    if unsupported:
        have = ", ".join(f"{k}={getattr(config, k)!r}" for k in unsupported)
        raise LmforgeError(f"Hugging Face export writes Llama models only (decoder, rmsnorm, "
                           f"swiglu, rope plain or with linear/yarn scaling); this model has "
                           f"{have}")
    special = tokenizer.special if tokenizer is not None else None
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": config.d_model, "intermediate_size": config.d_ff,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim, "num_hidden_layers": config.n_layer,
        "hidden_act": "silu", "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_seq_len, "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": config.bias, "mlp_bias": config.bias,
        "bos_token_id": special.bos if special else None,
        "eos_token_id": special.eos if special else None,
        "pad_token_id": special.pad if special else None,
        "torch_dtype": dtype_name(dtype),
        # the 4.x key, which transformers 5 reads too (its rope_parameters is 5.x only)
        **({"rope_scaling": _rope_parameters(config)} if config.rope_scaling != "none" else {}),
    }


def _generation_config(tokenizer: Tokenizer | None) -> dict:
    if tokenizer is None:
        return {}
    stops = tokenizer.stop_token_ids
    return {"bos_token_id": tokenizer.special.bos,
            "eos_token_id": stops[0] if len(stops) == 1 else stops or None,
            "pad_token_id": tokenizer.special.pad}


@single_threaded()
def save_hf(config: ModelConfig, state_dict: dict[str, torch.Tensor],
            tokenizer: Tokenizer | None, out_dir: str | Path,
            dtype: str | torch.dtype = torch.float32) -> None:
    """Write a HF Llama directory: model.safetensors, config.json, generation_config.json and
    (when `tokenizer` is given) tokenizer.json + tokenizer_config.json."""
    out, dtype = Path(out_dir), parse_dtype(dtype)
    hf = hf_config(config, tokenizer, dtype)
    tensors = layout.scatter(HF_NAMES, layout.split(config, state_dict))
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / "model.safetensors", tensors, dtype)
    if tokenizer is not None:
        tokenizer.save(out)
    atomic_write_text(out / "generation_config.json",
                      json.dumps(_generation_config(tokenizer), indent=2) + "\n")
    # config.json last: its presence is what marks the directory as a model
    atomic_write_text(out / "config.json", json.dumps(hf, indent=2) + "\n")


def load_converted(directory: str | Path, config_from: Callable[[dict, str], ModelConfig],
                   state_dict_from: Callable[[ModelConfig, dict, str], dict]
                   ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, our float32 state dict, the raw config.json dict) of a HF directory whose
    architecture has its own converter (BERT, GPT-2)."""
    d = Path(directory)
    hf = read_json(d / "config.json")
    config = config_from(hf, str(d / "config.json"))
    tensors = load_safetensors(weight_files(d))
    return config, state_dict_from(config, tensors, str(d)), hf
