"""Hugging Face BERT directories (`BertModel`, `BertForMaskedLM`) → ModelConfig + our state dict.

BERT (Devlin et al., 2019) is our Transformer with `family="encoder"` (bidirectional
attention), `norm_position="post"`, LayerNorm with biases, exact-erf GELU, learned absolute
positions and segment embeddings (`type_vocab_size`). Their names → ours (`{i}` a layer;
`BertForMaskedLM` puts everything under a "bert." prefix):

    embeddings.word_embeddings           embed           embeddings.LayerNorm    embed_norm
    embeddings.position_embeddings       abs_position.table
    embeddings.token_type_embeddings     type_embed
    encoder.layer.{i}.attention.self.{query,key,value}   layers.{i}.attn.qkv (rows [q; k; v])
    encoder.layer.{i}.attention.output.dense             layers.{i}.attn.out
    encoder.layer.{i}.attention.output.LayerNorm         layers.{i}.attn_norm
    encoder.layer.{i}.intermediate.dense                 layers.{i}.ffn.up
    encoder.layer.{i}.output.dense                       layers.{i}.ffn.down
    encoder.layer.{i}.output.LayerNorm                   layers.{i}.ffn_norm

Dropped: the pooler (tanh(W·h_CLS), trained for next-sentence prediction; sentence
embeddings mean-pool instead), the MLM head `cls.*` (no MLM head yet) and the
`position_ids` buffer. Any other tensor is an error, as is a missing one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf import load_converted
from lmforge.interop.layout import TensorSource
from lmforge.interop.threads import single_threaded
from lmforge.model.config import ModelConfig

ARCHITECTURES = ("BertModel", "BertForMaskedLM")
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu"}
IGNORED = ("embeddings.position_ids", "pooler.", "cls.")

GLOBAL_NAMES = {
    "embed": "embeddings.word_embeddings", "abs_position.table": "embeddings.position_embeddings",
    "type_embed": "embeddings.token_type_embeddings", "embed_norm": "embeddings.LayerNorm",
}
LAYER_NAMES = {  # ours → theirs, under encoder.layer.{i}.; qkv is fused from three
    "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn.out": ("attention.output.dense",), "attn_norm": ("attention.output.LayerNorm",),
    "ffn.up": ("intermediate.dense",), "ffn.down": ("output.dense",),
    "ffn_norm": ("output.LayerNorm",),
}


def is_bert(hf: dict) -> bool:
    """Whether a Hugging Face config.json dict names a BERT architecture this module reads."""
    archs = hf.get("architectures") or []
    return bool(archs) and archs[0] in ARCHITECTURES


def config_from_bert(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face BERT config.json dict."""
    if not is_bert(hf):
        raise LmforgeError(f"{where}: not a BERT model (architectures "
                           f"{hf.get('architectures')}); supported: {', '.join(ARCHITECTURES)}")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise LmforgeError(f"{where}: hidden_act {act!r} is not supported for BERT models; "
                           f"supported: {', '.join(ACTIVATIONS)}")
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise LmforgeError(f"{where}: position_embedding_type {kind!r} is not supported "
                           "(only 'absolute')")
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
            n_layer=int(hf["num_hidden_layers"]), n_head=int(hf["num_attention_heads"]),
            d_ff=int(hf["intermediate_size"]), family="encoder", norm="layernorm",
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)), mlp=ACTIVATIONS[act],
            position="learned", max_seq_len=int(hf.get("max_position_embeddings", 512)),
            tie_embeddings=True, bias=True, norm_position="post",
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
        )
    except KeyError as exc:
        raise LmforgeError(f"{where} lacks the key {exc.args[0]!r}") from None


def state_dict_from_bert(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str
                         ) -> dict[str, torch.Tensor]:
    """Our state dict from BERT tensors (renaming and fusing only: no arithmetic)."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    source = TensorSource(tensors, prefix, where, "BERT")
    take = source.take
    out = {}
    for ours, theirs in GLOBAL_NAMES.items():
        for suffix in ("weight", "bias") if ours == "embed_norm" else ("weight",):
            out[f"{ours}.{suffix}"] = take(f"{theirs}.{suffix}")
    for i in range(config.n_layer):
        for ours, sources in LAYER_NAMES.items():
            for suffix in ("weight", "bias"):
                pieces = [take(f"encoder.layer.{i}.{s}.{suffix}") for s in sources]
                out[f"layers.{i}.{ours}.{suffix}"] = torch.cat(pieces) if len(pieces) > 1 \
                    else pieces[0]
    return source.finish(config, out, lambda name: name.startswith(IGNORED))


@single_threaded()
def load_bert(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, our float32 state dict, the raw config.json dict) of a HF BERT directory."""
    return load_converted(directory, config_from_bert, state_dict_from_bert)
