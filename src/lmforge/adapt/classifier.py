"""A classification head as an adapter: saved apart from its base, read back and applied.

    adapter_config.json        {"pooling": "mean", "n_classes": 2, "labels": ["0", "1"],
                                "head_hidden": 0, "max_len": 128, "layer": -1, …,
                                "lmforge": {"format": "lmforge-adapter/1",
                                            "method": "head" | "probe",
                                            "base_model": "minilm", "base_hash": "sha256:…"}}
    adapter_model.safetensors  the head's tensors: out.weight, out.bias (dense.* with a
                               hidden layer)

The layout is the adapter directory of `adapt/adapter.py` (method "probe": a head on the
unchanged model; "head": a head on fully fine-tuned weights, whose checkpoint is the base).
`load_head` checks the base's content hash before it returns the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.adapt.heads import ClassifierHead
from lmforge.errors import LmforgeError
from lmforge.interop.tensors import load_safetensors, save_safetensors
from lmforge.io import write_directory

FORMAT = "lmforge-adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def save_head(directory: str | Path, method: str, settings: dict, base_model: str,
              base_hash: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a head adapter (replacing an older one at `directory`)."""
    config = {**settings, "lmforge": {"format": FORMAT, "method": method,
                                      "base_model": base_model, "base_hash": base_hash}}

    def write(tmp: Path) -> None:
        save_safetensors(tmp / WEIGHTS_FILE, {k: v.detach().float().cpu()
                                              for k, v in tensors.items()})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    write_directory(directory, write, force=True)
    return Path(directory)


@dataclass
class LoadedHead:
    head: ClassifierHead
    config: dict  # adapter_config.json

    @property
    def pooling(self) -> str:
        return self.config["pooling"]

    @property
    def labels(self) -> list[str]:
        return self.config["labels"]


def load_head(directory: str | Path, base_hash: str | None = None) -> LoadedHead:
    """The head adapter in `directory`; with `base_hash`, refused unless trained on it."""
    d = Path(directory)
    if not (d / CONFIG_FILE).is_file():
        raise LmforgeError(f"{d} is not a head adapter (no {CONFIG_FILE}); give the adapter/ "
                           "directory that `lmforge finetune` wrote")
    config = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    section = config.get("lmforge", {})
    if section.get("method") not in ("head", "probe"):
        raise LmforgeError(f"{d} holds a {section.get('method')!r} adapter, not a head")
    if base_hash is not None and section["base_hash"] != base_hash:
        raise LmforgeError(f"head {d} was trained on {section['base_model']} (hash "
                           f"{section['base_hash']}), not on this model (hash {base_hash}); "
                           f"load it on top of {section['base_model']}")
    tensors = load_safetensors([d / WEIGHTS_FILE])
    d_in = tensors["dense.weight" if config["head_hidden"] else "out.weight"].shape[1]
    head = ClassifierHead(d_in, config["n_classes"], config["head_hidden"])
    head.load_state_dict(tensors)
    return LoadedHead(head.eval(), config)
