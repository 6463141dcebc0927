"""Checkpoints of a run: `checkpoints/step-N/` is a loadable checkpoint directory (config.json,
model.safetensors, tokenizer/; on a frozen base only the trained tensors, plus base.json)
and `train_state.pt`: optimizer state, step, best validation loss, the objective's heads
and every RNG state, read back with `torch.load(weights_only=True)` (never unpickled).

Each checkpoint is written into a temporary directory and renamed into place, so a crash
leaves the previous checkpoints whole; the last `keep` are kept, plus `best/`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import Tokenizer

STEP_DIR = re.compile(r"step-(\d+)")


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step-*")
             if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()] if root.is_dir() else []
    return sorted(found)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def save(run_dir: Path, step: int, config: ModelConfig, weights: dict[str, torch.Tensor],
         tokenizer: Tokenizer, state: dict, keep: int, best: bool, base: dict | None = None
         ) -> Path:
    """Write checkpoints/step-N (and best/ when `best`), then prune to the last `keep`;
    `weights`: the model's state dict (gathered from every shard under FSDP), or only its
    trained tensors when `base` (the base.json record of a frozen base) is given."""
    final = run_dir / "checkpoints" / f"step-{step}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = {k: v.detach().to(torch.float32).contiguous() for k, v in weights.items()}
    save_checkpoint(tmp, config, weights, tokenizer, base=base)
    torch.save(state, tmp / "train_state.pt")
    if best:
        best_tmp = run_dir / ".best.tmp"
        shutil.rmtree(best_tmp, ignore_errors=True)
        shutil.copytree(tmp, best_tmp)
        _replace_dir(best_tmp, run_dir / "best")
    _replace_dir(tmp, final)
    for _, old in step_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def latest(run_dir: Path) -> Path:
    dirs = step_dirs(run_dir)
    if not dirs:
        raise LmforgeError(f"--resume: {run_dir} has no checkpoints/step-N to resume from; "
                           "run without --resume to start")
    return dirs[-1][1]


def load_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "train_state.pt", weights_only=True)
