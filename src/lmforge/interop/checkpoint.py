"""lmforge checkpoint directories, and run directories that hold them.

Checkpoint directory (format "lmforge/1"):

    config.json        {"format": "lmforge/1", <every ModelConfig field>}
    model.safetensors  our state dict under our names (any family, not only Llama)
    tokenizer/         a tokenizer directory (tokenizer.json + tokenizer_config.json …)

Run directory (written by `lmforge train`): `best/` and/or `checkpoints/step-N/`, each a
checkpoint directory; it resolves to `best/`, else to the step with the largest N.

config.json is written last, so a directory with a config.json has all its files.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf import read_json
from lmforge.interop.tensors import load_safetensors, parse_dtype, save_safetensors
from lmforge.interop.threads import single_threaded
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import Tokenizer, load_tokenizer

FORMAT = "lmforge/1"
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
                    dtype: str | torch.dtype | None = None) -> None:
    """Write a checkpoint directory; tensors keep their dtype unless `dtype` is given."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_safetensors(d / "model.safetensors", state_dict,
                     parse_dtype(dtype) if dtype is not None else None)
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer")
    config.save(d / "config.json", format=FORMAT)


@single_threaded()
def load_checkpoint(directory: str | Path, dtype: torch.dtype | None = torch.float32
                    ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """(config, state dict cast to `dtype` (None: as stored), tokenizer or None) of a checkpoint
    or run directory."""
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
    config = ModelConfig.from_dict(data)
    if not (d / "model.safetensors").is_file():
        raise LmforgeError(f"{d} has a config.json but no model.safetensors; the checkpoint "
                           "is incomplete")
    state_dict = load_safetensors([d / "model.safetensors"], dtype)
    tokenizer = load_tokenizer(d / "tokenizer") if (d / "tokenizer").is_dir() else None
    return config, state_dict, tokenizer
