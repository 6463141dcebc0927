"""The Python API: load a model by name or path, then generate, chat or evaluate.

    >>> import lmforge
    >>> lm = lmforge.load("smollm2", dtype="bf16")
    >>> lm.engine.generate([lm.tokenizer.encode("The capital of France is")],
    ...                    lmforge.GenerationConfig(max_tokens=8, temperature=0))[0].text
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from lmforge.compress.checkpoint import transforms_for
from lmforge.errors import LmforgeError
from lmforge.generate.compiled import compile_decode
from lmforge.generate.engine import Engine
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.load import load_weights, resolve_model
from lmforge.model.config import ModelConfig
from lmforge.model.linear import pack_for_inference
from lmforge.model.rope_scaling import with_rope_scaling
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.base import Tokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise LmforgeError(f"unknown dtype {name!r}; choose one of fp32, bf16") from None


@dataclass
class LoadedModel:
    """A model ready to run: the network, its tokenizer and where it came from."""

    model: Transformer
    tokenizer: Tokenizer
    name: str
    source: str
    metadata: dict

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @cached_property
    def engine(self) -> Engine:
        """The generation engine; encoders have none (their outputs are not next tokens)."""
        if not self.config.causal:
            raise LmforgeError(
                f"{self.name} is an encoder (family {self.config.family!r}): encoders do not "
                "generate text left to right; they fill [MASK] tokens "
                "(lmforge.generate.fill.fill_masks, or `lmforge generate` with [MASK] in the "
                "prompt); for sentence embeddings use lmforge.embed.embed(lm, texts)")
        return Engine(self.model, self.tokenizer)


Transform = Callable[[Transformer], object]


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor],
                dtype: torch.dtype = torch.float32, transforms: Sequence[Transform] = ()
                ) -> Transformer:
    """A Transformer in eval mode holding `state_dict` (strict: every tensor must match).

    `transforms` swap modules before the weights load, each a callable taking the model
    (typically through `model.surgery.replace_linears`): they run on the meta device, so a
    quantized or adapted checkpoint (int8 weights and scales, LoRA matrices) is assigned
    straight into its modules, with no full-precision copy first and no strict-key failure.
    Floating-point tensors are then cast to `dtype`; integer ones stay as they are.
    """
    with torch.device("meta"):  # no memory and no random init for weights we overwrite
        model = Transformer(config)
        for transform in transforms:
            transform(model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise LmforgeError(f"weights do not fit the config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    for module in model.modules():
        if hasattr(module, "init_buffers"):
            module.init_buffers()
    empty = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if empty:
        raise LmforgeError(f"{empty[:5]} got no value: a transform created tensors the state "
                           "dict does not hold; add them to it, or compute them in the "
                           "module's init_buffers()")
    return model.to(dtype).eval()


def load(spec: str, dtype: str = "fp32", compile: bool = False,
         adapter: str | Path | None = None, rope_scaling: str | None = None) -> LoadedModel:
    """Load a built-in model name, a .gguf file, a Hugging Face or an lmforge directory;
    `compile`: decode steps through torch.compile (`lmforge.generate.compiled`); `adapter`:
    an adapter directory trained on this model, put on top (`lmforge.adapt.adapter`);
    `rope_scaling`: "METHOD:FACTOR" (linear, ntk, yarn; `lmforge.model.rope_scaling`) to
    run past the trained context window, or "none"."""
    adapters = [adapter] if adapter is not None else []
    return load_with_adapters(spec, adapters, dtype, compile, rope_scaling)[-1]


def load_with_adapters(spec: str, adapters: Sequence[str | Path], dtype: str = "fp32",
                       compile: bool = False, rope_scaling: str | None = None
                       ) -> list[LoadedModel]:
    """[the base model, then the base with each adapter on top] (arguments as `load`).

    The base's weights are held once however many adapters there are: each adapted model is
    a copy of the base's modules that reads the base's own parameters and buffers (a
    deepcopy whose memo maps every base tensor to itself), and the adapter adds its modules
    to that copy only. Adapters never write into base tensors (LoRA stays unmerged)."""
    source = resolve_model(spec)
    if dtype == "q":  # a GGUF's Q8_0/Q4_0/Q4_1 weights as they are, fp32 activations
        from lmforge.compress.gguf_native import load_native

        config, state_dict, tokenizer, meta, transforms = load_native(spec)
        dtype = "fp32"
    else:
        config, state_dict, tokenizer, meta = load_weights(spec)
        transforms = transforms_for(meta, state_dict)
    if rope_scaling is not None:
        config = with_rope_scaling(config, rope_scaling)
    if tokenizer is None:
        raise LmforgeError(f"{source.path} has no tokenizer; add tokenizer files to generate")
    base = build_model(config, state_dict, parse_dtype(dtype), transforms)
    models = [base]
    if adapters:
        from lmforge.adapt.adapter import AdapterBase, load_adapter

        identity = AdapterBase(spec, content_hash(state_dict))
        del state_dict  # the base model holds the weights now
        shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
        for adapter in adapters:
            model = copy.deepcopy(base, memo=dict(shared))
            load_adapter(adapter, model, identity)
            models.append(model)
    for model in models:
        pack_for_inference(model)  # oneDNN's blocked weights for multi-row products (fp32, CPU)
        if compile:
            compile_decode(model)
    return [LoadedModel(m, tokenizer, source.name, str(source.path), meta) for m in models]
