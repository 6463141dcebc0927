"""Hugging Face T5 directories (`T5ForConditionalGeneration`) → ModelConfig + our state dict.

T5 (Raffel et al., 2020) is our Transformer with `family="encoder_decoder"`: pre-norm
RMSNorm without biases, relative position bias (one table per stack, in its first layer),
no 1/√d in attention (`scale_attention=False`), ReLU (T5) or GELU-tanh GeGLU (T5 v1.1,
"gated-gelu") feed-forward layers, one embedding shared by both stacks, and a head that is
either tied to it with the decoder output scaled by d_model^-½ (original T5) or separate.

    shared                                              embed
    {encoder|decoder}.block.{i}.layer.0.layer_norm      [encoder.]layers.{i}.attn_norm
      ….layer.0.SelfAttention.{q,k,v}                   ….attn.qkv  (rows [q; k; v])
      ….layer.0.SelfAttention.o                         ….attn.out
      block.0.layer.0.SelfAttention.relative_attention_bias   [encoder.]rel_bias.table
    decoder.block.{i}.layer.1.layer_norm                layers.{i}.cross_norm
      ….layer.1.EncDecAttention.q / {k,v} / o           ….cross_attn.q / kv / out
    ….layer.{-1}.layer_norm                             ….ffn_norm
      ….DenseReluDense.wi  |  wi_0, wi_1                ….ffn.up (gated rows [wi_0; wi_1])
      ….DenseReluDense.wo                               ….ffn.down
    {encoder|decoder}.final_layer_norm                  encoder.norm / norm
    lm_head (when not tied)                             lm_head
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf import load_converted
from lmforge.interop.layout import TensorSource
from lmforge.interop.threads import single_threaded
from lmforge.model.config import ModelConfig

ARCHITECTURES = ("T5ForConditionalGeneration",)
ACTIVATIONS = {"relu": "relu", "gated-gelu": "geglu_tanh", "gated-gelu_new": "geglu_tanh",
               "gelu": "gelu", "gated-relu": None}
# the copies of `shared` transformers may save beside it
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def is_t5(hf: dict) -> bool:
    archs = hf.get("architectures") or []
    return bool(archs) and archs[0] in ARCHITECTURES


def config_from_t5(hf: dict, where: str = "config.json") -> ModelConfig:
    proj = hf.get("feed_forward_proj", "relu")
    if ACTIVATIONS.get(proj) is None:
        raise LmforgeError(f"{where}: feed_forward_proj {proj!r} is not supported; supported: "
                           f"{', '.join(k for k, v in ACTIVATIONS.items() if v)}")
    tied = hf.get("tie_word_embeddings", True) is not False
    try:
        n_layer = int(hf["num_layers"])
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]),
            n_layer=int(hf.get("num_decoder_layers") or n_layer), n_encoder_layer=n_layer,
            n_head=int(hf["num_heads"]), head_dim=int(hf["d_kv"]), d_ff=int(hf["d_ff"]),
            family="encoder_decoder", norm="rmsnorm",
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)), mlp=ACTIVATIONS[proj],
            position="relative",
            relative_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            scale_attention=False, max_seq_len=int(hf.get("n_positions") or 512),
            tie_embeddings=tied, head_rescale=bool(hf.get("scale_decoder_outputs", tied)),
            decoder_start_id=int(hf.get("decoder_start_token_id") or 0), bias=False)
    except KeyError as exc:
        raise LmforgeError(f"{where} lacks the key {exc.args[0]!r}") from None


def _stack(take, config: ModelConfig, theirs: str, ours: str, n_layer: int, decoder: bool
           ) -> dict[str, torch.Tensor]:
    """One stack's tensors (`encoder.` or `decoder.` → `encoder.` or the top level)."""
    out = {f"{ours}rel_bias.table.weight":
           take(f"{theirs}block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
           f"{ours}norm.weight": take(f"{theirs}final_layer_norm.weight")}
    for i in range(n_layer):
        b, o = f"{theirs}block.{i}.layer.", f"{ours}layers.{i}."
        att = b + "0.SelfAttention."
        out[o + "attn_norm.weight"] = take(b + "0.layer_norm.weight")
        out[o + "attn.qkv.weight"] = torch.cat([take(att + f"{p}.weight") for p in "qkv"])
        out[o + "attn.out.weight"] = take(att + "o.weight")
        ff = 2 if decoder else 1
        if decoder:
            cross = b + "1.EncDecAttention."
            out[o + "cross_norm.weight"] = take(b + "1.layer_norm.weight")
            out[o + "cross_attn.q.weight"] = take(cross + "q.weight")
            out[o + "cross_attn.kv.weight"] = torch.cat([take(cross + "k.weight"),
                                                         take(cross + "v.weight")])
            out[o + "cross_attn.out.weight"] = take(cross + "o.weight")
        mlp = f"{b}{ff}.DenseReluDense."
        out[o + "ffn_norm.weight"] = take(f"{b}{ff}.layer_norm.weight")
        out[o + "ffn.up.weight"] = (torch.cat([take(mlp + "wi_0.weight"),
                                               take(mlp + "wi_1.weight")])
                                    if config.gated else take(mlp + "wi.weight"))
        out[o + "ffn.down.weight"] = take(mlp + "wo.weight")
    return out


def state_dict_from_t5(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str
                       ) -> dict[str, torch.Tensor]:
    """Our state dict from T5 tensors (renaming and concatenating rows only)."""
    source = TensorSource(tensors, "", where, "T5")
    shared = "shared.weight" if "shared.weight" in tensors else TIED_COPIES[0]
    out = {"embed.weight": source.take(shared)}
    out |= _stack(source.take, config, "encoder.", "encoder.", config.encoder_layers, False)
    out |= _stack(source.take, config, "decoder.", "", config.n_layer, True)
    if not config.tie_embeddings:
        out["lm_head.weight"] = source.take("lm_head.weight")
    return source.finish(config, out, lambda name: name in TIED_COPIES
                         or (config.tie_embeddings and name == "lm_head.weight"))


@single_threaded()
def load_t5(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, our float32 state dict, the raw config.json dict) of a HF T5 directory."""
    return load_converted(directory, config_from_t5, state_dict_from_t5)
