"""Quantized checkpoint directories: an lmforge checkpoint (`interop/checkpoint.py`) whose
config.json carries a `quantization` section and whose model.safetensors holds each quantized
projection as its stored tensors.

    config.json        {"format": "lmforge/1", <ModelConfig fields>,
                        "quantization": {"scheme": "int4-g32", "group_size": 32,
                                         "method": "gptq", "skip": ["lm_head"],
                                         "calibration": {"file": …, "samples": 128,
                                                         "seq_len": 512}}}
    model.safetensors  layers.N.attn.qkv.codes    I8 (out, in); int4: U8 (out, in/2), two
                                                  codes per byte, column 2j in the low nibble;
                                                  fp8: F8_E4M3 / F8_E5M2 (out, in)
                       layers.N.attn.qkv.scale    F32 (out,), (out, in/G) or (1,)
                       layers.N.attn.qkv.zero     F32 (out, in/G), int4 only
                       embed.codes / embed.scale  I8 (vocab, d) / F32 (vocab,): with
                                                  "head": true (`compress/embedding.py`)
                       … every other tensor as in a float checkpoint (norms, projections
                       named in `skip`, the embedding without "head")
    tokenizer/         the tokenizer, as in any checkpoint

Loading (`lmforge.load(dir)`, and through it every command) builds the model on the meta
device, puts empty `QuantLinear`s where the file holds `codes` (and an empty
`QuantEmbedding`, with its tied head, for `embed.codes`) (`transforms_for`, the
transform `api.build_model` runs), and assigns the stored tensors to them: no float copy of
a quantized weight is ever made. `--dtype bf16` casts scales, zeros and the float tensors;
codes stay as stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from lmforge.compress.embedding import install_empty_embedding
from lmforge.compress.quantize import Quantization, install_empty, quantized_layers
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.tokenizers import Tokenizer

SECTION = "quantization"
CODES = ".codes"


def save_quantized(directory: str | Path, model: nn.Module, tokenizer: Tokenizer | None,
                   quantization: Quantization) -> None:
    """Write `model` (quantized by `quantize_model`) as a checkpoint directory; config.json,
    written last and atomically like every file here, says how it was quantized."""
    if not quantized_layers(model):
        raise LmforgeError("the model has no quantized layers; run quantize_model first")
    save_checkpoint(directory, model.config, model.state_dict(), tokenizer,
                    extra={SECTION: quantization.to_dict()})


def transforms_for(metadata: Mapping, state_dict: Mapping[str, torch.Tensor]
                   ) -> list[Callable[[nn.Module], object]]:
    """The `api.build_model` transforms a checkpoint needs: none for a float one; for a
    quantized one (`metadata`: its config.json), empty `QuantLinear`s where it holds codes."""
    if SECTION not in metadata:
        return []
    quantization = Quantization.from_dict(metadata[SECTION])
    names = {k[:-len(CODES)] for k in state_dict if k.endswith(CODES)}
    embedding = "embed" in names
    names.discard("embed")
    if not names:
        raise LmforgeError("config.json has a quantization section but model.safetensors holds "
                           "no quantized weights (no *.codes tensors); the checkpoint is damaged")
    transforms = [lambda model: install_empty(model, quantization, names)]
    return transforms + ([install_empty_embedding] if embedding else [])

