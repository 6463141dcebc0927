"""Adapter directories: what a method trained on top of a frozen base, saved apart from it.

    adapter_config.json        the method's own keys (PEFT's for LoRA, so `peft` reads it) and
                               "lmforge": {"format": "lmforge-adapter/1", "method": "lora",
                                           "base_model": "smollm2",
                                           "base_hash": "sha256:…"}
    adapter_model.safetensors  the adapter's tensors, under the method's names

`base_hash` is the content hash of the base (`interop/fingerprint.py`: the state dict as
`load_weights` returns it), so an adapter is only put on the weights it was trained on; a
mismatch is refused with both hashes. An adapter written by `peft` has no "lmforge" section:
its method is found from its `peft_type`, and it is checked against the base only by its
tensors' names and shapes.

Methods (LoRA, prompt tuning, P-Tuning v2, heads) register an `AdapterMethod`:
`export(model)` gives the method's config keys and tensors of the adapter attached to
`model`; `apply(model, config, tensors)` attaches one to a model that has none. A method's
module is imported when an adapter of it is loaded (`METHOD_MODULES`).

The directory is written whole under a temporary name, then renamed (`io.write_directory`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.interop.tensors import load_safetensors, save_safetensors
from lmforge.io import write_directory

FORMAT = "lmforge-adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SECTION = "lmforge"  # our keys inside adapter_config.json (PEFT ignores keys it lacks)

# where each built-in method registers itself (imported on first use)
METHOD_MODULES = {"lora": "lmforge.adapt.lora_format", "head": "lmforge.adapt.classifier",
                  "probe": "lmforge.adapt.classifier", "prompt": "lmforge.adapt.prompt_tuning",
                  "ptuning2": "lmforge.adapt.ptuning2"}

Export = Callable[[nn.Module], tuple[dict, dict[str, torch.Tensor]]]
Apply = Callable[[nn.Module, dict, dict[str, torch.Tensor]], None]


@dataclass(frozen=True)
class AdapterMethod:
    name: str
    export: Export
    apply: Apply
    peft_type: str | None = None  # PEFT's name of the method, to read adapters peft wrote


METHODS: dict[str, AdapterMethod] = {}


def register_method(method: AdapterMethod) -> AdapterMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    if name not in METHODS and name in METHOD_MODULES:
        importlib.import_module(METHOD_MODULES[name])
    if name not in METHODS:
        known = sorted(set(METHODS) | set(METHOD_MODULES))
        raise LmforgeError(f"unknown adapter method {name!r}; known methods: {', '.join(known)}")
    return METHODS[name]


@dataclass(frozen=True)
class AdapterBase:
    """The model an adapter goes on: how it was named (a `--model` spec) and its hash."""

    name: str
    content_hash: str


@dataclass
class Adapter:
    """An adapter directory as read: its method, base (None when peft wrote it), the whole
    adapter_config.json and the tensors (as stored)."""

    directory: Path
    method: str
    base: AdapterBase | None
    config: dict
    tensors: dict[str, torch.Tensor]


def save_adapter(directory: str | Path, model: nn.Module, method: str, base: AdapterBase,
                 force: bool = False) -> Path:
    """Write the `method` adapter attached to `model` (trained on `base`) to `directory`;
    a non-empty `directory` is replaced only with `force`."""
    spec = get_method(method)
    config, tensors = spec.export(model)
    if spec.peft_type is not None:  # PEFT's own name of the base
        config["base_model_name_or_path"] = base.name
    config = {**config, SECTION: {"format": FORMAT, "method": method, "base_model": base.name,
                                  "base_hash": base.content_hash}}

    def write(tmp: Path) -> None:
        save_safetensors(tmp / WEIGHTS_FILE, tensors)
        # written last: a directory with adapter_config.json is a whole adapter
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    write_directory(directory, write, force)
    return Path(directory)


def _method_of(config: dict, where: Path) -> str:
    section = config.get(SECTION)
    if isinstance(section, dict):
        if section.get("format") != FORMAT:
            raise LmforgeError(f"{where} has format {section.get('format')!r}; this lmforge "
                               f"reads {FORMAT!r}")
        return str(section.get("method"))
    peft_type = config.get("peft_type")
    for name in METHOD_MODULES:
        get_method(name)
    for method in METHODS.values():
        if peft_type is not None and method.peft_type == peft_type:
            return method.name
    readable = ", ".join(m.peft_type for m in METHODS.values() if m.peft_type)
    raise LmforgeError(f"{where} names no lmforge method and its peft_type {peft_type!r} is "
                       f"not one lmforge reads ({readable})")


def read_adapter(directory: str | Path) -> Adapter:
    """The adapter in `directory`, unchecked against any base."""
    d = Path(directory)
    config_path, weights = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not config_path.is_file():
        what = "is not a directory" if not d.is_dir() else f"has no {CONFIG_FILE}"
        raise LmforgeError(f"adapter {d} {what}; give a directory written by `lmforge "
                           "finetune` or by peft's save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{config_path} is not valid JSON ({exc})") from None
    if not weights.is_file():
        raise LmforgeError(f"adapter {d} has no {WEIGHTS_FILE} (a pickled adapter_model.bin "
                           "is not read: save it again with safe_serialization=True)")
    method = _method_of(config, config_path)
    section = config.get(SECTION)
    base = AdapterBase(section["base_model"], section["base_hash"]) if section else None
    return Adapter(d, method, base, config, load_safetensors([weights], dtype=None))


def check_base(adapter: Adapter, base: AdapterBase) -> None:
    """Refuse an adapter trained on other weights than `base`'s."""
    if adapter.base is not None and adapter.base.content_hash != base.content_hash:
        raise LmforgeError(
            f"adapter {adapter.directory} was trained on base {adapter.base.name} (hash "
            f"{adapter.base.content_hash}), not on {base.name} (hash {base.content_hash}); "
            f"load it on top of {adapter.base.name}")


def load_adapter(directory: str | Path, model: nn.Module, base: AdapterBase | None) -> Adapter:
    """Read the adapter in `directory`, check it was trained on `base` (when given), and
    attach it to `model`."""
    adapter = read_adapter(directory)
    if base is not None:
        check_base(adapter, base)
    get_method(adapter.method).apply(model, adapter.config, adapter.tensors)
    return adapter
