"""safetensors files in and out, and dtype names; shared by the checkpoint and HF converters.

Weights are only ever read from safetensors (a header + raw bytes, no code): pickled formats
(`.bin`, `.pt`) can run arbitrary code when loaded, so lmforge refuses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.io import atomic_write

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch dtype from a name ('float32', 'bf16', …) or a torch dtype among them."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise LmforgeError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32 (the spelling Hugging Face configs use)."""
    return str(dtype).removeprefix("torch.")


def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                     dtype: torch.dtype | None = None) -> None:
    """Write `tensors` (cast to `dtype` when given) atomically as one safetensors file.

    Every tensor is copied to its own contiguous storage: safetensors refuses tensors that
    share memory, and the pieces of a split fused weight do.
    """
    owned = {name: t.detach().to(dtype=dtype or t.dtype, memory_format=torch.contiguous_format,
                                 copy=True)
             for name, t in tensors.items()}
    # "format": "pt" is what transformers checks before loading a safetensors file
    atomic_write(path, lambda tmp: save_file(owned, tmp, metadata={"format": "pt"}))


def load_safetensors(paths: Iterable[Path], dtype: torch.dtype | None = torch.float32
                     ) -> dict[str, torch.Tensor]:
    """All tensors of the given safetensors files (cast to `dtype` unless None)."""
    out = {}
    for path in paths:
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise LmforgeError(f"{path} is not a readable safetensors file ({exc}); "
                               "re-download or re-save it") from None
        for name, t in tensors.items():
            out[name] = t if dtype is None else t.to(dtype)
    return out


def refuse_pickles(directory: Path) -> None:
    """Raise a clear LmforgeError when `directory` has pickled weights but no safetensors."""
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise LmforgeError(
            f"{directory} holds weights only as pickle files ({', '.join(pickles[:3])}); "
            "lmforge never unpickles (loading a pickle can run arbitrary code). Convert them "
            "to safetensors with a tool you trust, e.g. transformers: "
            "AutoModelForCausalLM.from_pretrained(d).save_pretrained(out, safe_serialization=True)")
    raise LmforgeError(f"{directory} has no *.safetensors weight files")
