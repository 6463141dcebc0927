"""One entry point for every model source: `resolve_model(spec)` then `load_weights(spec)`.

The kind is read from the content, never from a name or suffix:

    a built-in name (registry.py)                  → where its package keeps it
    a file starting with the bytes "GGUF"          → gguf
    a directory whose config.json has "format"     → lmforge checkpoint
    … has "architectures" and no "format"          → hf (Llama/Mistral: hf.py, BERT: bert.py,
                                                     GPT-2: gpt2.py, T5: t5.py)
    a directory with best/ or checkpoints/step-N/  → lmforge (best/, else the latest step)

`load_weights` returns float32 tensors under our names; building the model and choosing its
dtype is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop import bert, checkpoint, gpt2, registry, t5
from lmforge.interop.gguf import load_gguf
from lmforge.interop.gguf_file import MAGIC
from lmforge.interop.hf import load_hf, read_json
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import BPETokenizer, Tokenizer, load_tokenizer

KINDS = ("gguf", "hf", "lmforge")
EXPECTED = (
    f"a built-in model ({', '.join(registry.MODELS)}), a .gguf file, a Hugging Face "
    'directory (config.json with "architectures" + *.safetensors), an lmforge checkpoint '
    '(config.json with "format") or a run directory (best/ or checkpoints/step-N/)'
)


@dataclass(frozen=True)
class ModelSource:
    kind: str  # one of KINDS
    path: Path  # the .gguf file or the model directory (for a run: the chosen checkpoint)
    name: str  # the built-in name, or the file/directory name


def _kind_of_dir(d: Path) -> tuple[str, Path]:
    if (d / "config.json").is_file():
        cfg = read_json(d / "config.json")
        if "format" in cfg:
            return "lmforge", d
        if "architectures" in cfg:
            return "hf", d
        raise LmforgeError(f'{d / "config.json"} has neither "format" (an lmforge checkpoint) '
                           'nor "architectures" (a Hugging Face model); expected ' + EXPECTED)
    run = checkpoint.resolve_run(d)
    if run is not None:
        return "lmforge", run
    raise LmforgeError(f"{d} holds no model: no config.json, best/ or checkpoints/step-N/; "
                       "expected " + EXPECTED)


def resolve_model(spec: str | Path) -> ModelSource:
    """What `spec` names and where it is (see the module docstring for the rules)."""
    name = str(spec)
    if name in registry.MODELS:
        path = registry.model_path(name)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise LmforgeError(f"no model {name!r}: no such file or directory, and not a "
                               f"built-in name; expected {EXPECTED}")
        name = path.name
    if path.is_dir():
        kind, path = _kind_of_dir(path)
        return ModelSource(kind, path, name)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise LmforgeError(f"{path} is not a GGUF file (it starts with {head!r}, not {MAGIC!r}); "
                           f"expected {EXPECTED}")
    return ModelSource("gguf", path, name)


# Hugging Face architectures with their own converter; everything else is read as Llama
HF_LOADERS = ((bert.is_bert, bert.load_bert), (gpt2.is_gpt2, gpt2.load_gpt2),
              (t5.is_t5, t5.load_t5))


def load_weights(spec: str | Path
                 ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None, dict]:
    """(config, float32 state dict, tokenizer or None, metadata) of any model source.

    metadata: the GGUF key/values, the HF config.json, or the checkpoint's config.json.
    """
    src = resolve_model(spec)
    if src.kind == "gguf":
        config, state_dict, meta = load_gguf(src.path)
        tokenizer = BPETokenizer.from_gguf_metadata(meta) if "tokenizer.ggml.model" in meta \
            else None
        return config, state_dict, tokenizer, meta
    if src.kind == "hf":
        hf = read_json(src.path / "config.json")
        loader = next((load for is_kind, load in HF_LOADERS if is_kind(hf)), load_hf)
        config, state_dict, meta = loader(src.path)
        has_tokenizer = (src.path / "tokenizer.json").is_file()
        return config, state_dict, load_tokenizer(src.path) if has_tokenizer else None, meta
    config, state_dict, tokenizer = checkpoint.load_checkpoint(src.path)
    return config, state_dict, tokenizer, read_json(src.path / "config.json")
