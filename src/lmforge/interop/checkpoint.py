"""lmforge checkpoint directories, and run directories that hold them.

Checkpoint directory (format "lmforge/1"):

    config.json        {"format": "lmforge/1", <every ModelConfig field>}
    model.safetensors  our state dict under our names (any family, not only Llama)
    tokenizer/         a tokenizer directory (tokenizer.json + tokenizer_config.json …)

Run directory (written by `lmforge train`): `best/` and/or `checkpoints/step-N/`, each a
checkpoint directory; it resolves to `best/`, else to the step with the largest N.

A checkpoint trained on a frozen base (`train.trainable`, `train/base.py`) holds only the
trained tensors in model.safetensors, plus

    base.json          {"init_from": <model spec>, "content_hash": "sha256:…",
                        "trainable": [the run's patterns]}

Loading it loads `init_from`, checks its content hash (`interop/fingerprint.py`; a base that
changed since training is an error) and puts the trained tensors on top.

config.json is written last, so a directory with a config.json has all its files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.hf import read_json
from lmforge.interop.tensors import load_safetensors, parse_dtype, save_safetensors
from lmforge.interop.threads import single_threaded
from lmforge.io import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import Tokenizer, load_tokenizer

FORMAT = "lmforge/1"
BASE_FILE = "base.json"
_STEP = re.compile(r"step-(\d+)")


def is_checkpoint(directory: Path) -> bool:
    """True when `directory/config.json` carries a "format" key (HF configs never do)."""
    path = directory / "config.json"
    return path.is_file() and "format" in read_json(path)


def resolve_run(directory: str | Path) -> Path | None:
    """The checkpoint a run directory stands for: best/, else the latest checkpoints/step-N/."""
    d = Path(directory)
    if is_checkpoint(d / "best"):
        return d / "best"
    steps = [(int(m.group(1)), p) for p in (d / "checkpoints").glob("step-*")
             if (m := _STEP.fullmatch(p.name)) and is_checkpoint(p)]
    return max(steps)[1] if steps else None


@single_threaded()
def save_checkpoint(directory: str | Path, config: ModelConfig,
                    state_dict: dict[str, torch.Tensor], tokenizer: Tokenizer | None,
                    dtype: str | torch.dtype | None = None, base: dict | None = None,
                    extra: dict | None = None) -> None:
    """Write a checkpoint directory; tensors keep their dtype unless `dtype` is given;
    `base`: the base.json record when `state_dict` holds only what was trained on it;
    `extra`: config.json sections beside the model's fields (`quantization`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_safetensors(d / "model.safetensors", state_dict,
                     parse_dtype(dtype) if dtype is not None else None)
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer")
    if base is not None:
        atomic_write_text(d / BASE_FILE, json.dumps(base, indent=2) + "\n")
    config.save(d / "config.json", format=FORMAT, **(extra or {}))


def read_base(directory: Path) -> dict | None:
    """The base.json record of a checkpoint trained on a frozen base, else None."""
    path = directory / BASE_FILE
    return read_json(path) if path.is_file() else None


def on_base(directory: Path, base: dict, config: ModelConfig,
            trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole state dict: the base named in base.json, checked against its content hash,
    with the checkpoint's trained tensors on top."""
    from lmforge.interop.load import load_weights  # load.py reads checkpoints: import late

    spec = base["init_from"]
    try:
        base_config, state_dict, _, _ = load_weights(spec)
    except LmforgeError as exc:
        raise LmforgeError(f"{directory} holds only the parameters trained on top of {spec!r}, "
                           f"which does not load: {exc}") from None
    found = content_hash(state_dict)
    if found != base["content_hash"]:
        raise LmforgeError(f"{directory} was trained on top of {spec!r} with content hash "
                           f"{base['content_hash']}, but it now hashes to {found}: the base "
                           "changed since training; restore it, or train again from the new one")
    if base_config != config:
        raise LmforgeError(f"{directory}/config.json does not describe its base {spec!r}; the "
                           "checkpoint is damaged")
    unknown = sorted(set(trained) - set(state_dict))
    if unknown:
        raise LmforgeError(f"{directory} holds tensors its base {spec!r} lacks: {unknown[:5]}")
    return {**state_dict, **trained}


@single_threaded()
def load_checkpoint(directory: str | Path, dtype: torch.dtype | None = torch.float32,
                    with_base: bool = True
                    ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """(config, state dict cast to `dtype` (None: as stored), tokenizer or None) of a checkpoint
    or run directory. A checkpoint trained on a frozen base gives its base with the trained
    tensors on top; `with_base=False`: the stored tensors only."""
    d = Path(directory)
    if not is_checkpoint(d):
        run = resolve_run(d)
        if run is None and not (d / "config.json").is_file():
            raise LmforgeError(f"{d} is neither a checkpoint directory (config.json with "
                               f"\"format\": \"{FORMAT}\") nor a run directory (best/ or "
                               "checkpoints/step-N/)")
        d = run or d
    data = read_json(d / "config.json")
    fmt = data.pop("format", None)
    if fmt != FORMAT:
        raise LmforgeError(f"{d / 'config.json'} has format {fmt!r}; this lmforge reads "
                           f"{FORMAT!r} (a newer lmforge wrote it, or it is not a checkpoint)")
    # quantized (`compress/checkpoint.py`): integer and fp8 codes and exact scales, as stored
    quantized = data.pop("quantization", None) is not None
    config = ModelConfig.from_dict(data)
    if not (d / "model.safetensors").is_file():
        raise LmforgeError(f"{d} has a config.json but no model.safetensors; the checkpoint "
                           "is incomplete")
    state_dict = load_safetensors([d / "model.safetensors"], None if quantized else dtype)
    base = read_base(d)
    if base is not None and with_base:
        state_dict = on_base(d, base, config, state_dict)
        if dtype is not None:
            state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    tokenizer = load_tokenizer(d / "tokenizer") if (d / "tokenizer").is_dir() else None
    return config, state_dict, tokenizer
