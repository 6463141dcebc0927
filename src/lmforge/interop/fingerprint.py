"""Content hashes of models: a name for a set of weights that changes when any weight does.

    content_hash(state_dict) = "sha256:" + sha256( for name in sorted(names):
                                   name ‖ 0x00 ‖ dtype ‖ 0x00 ‖ shape ‖ 0x00 ‖ bytes )

with `dtype` torch's name without "torch." (`float32`), `shape` the sizes joined by commas
(empty for a scalar) and `bytes` the tensor's elements in row-major order, in the machine's
byte order (little-endian on every platform PyTorch supports). The header fixes how many
bytes follow, so two different state dicts never feed sha256 the same stream. The hash
depends on the values, the names, the dtypes and the shapes, not on the order of the dict,
the device or the memory layout (strides) of the tensors.

It names the frozen base of a fine-tuning run (`train/base.py`: a checkpoint that holds only
the trained parameters records the hash of the base it goes on top of, and loading it checks
the base is still the same) and, later, the base of an adapter (`adapter_config.json`).
Hash the state dict as `interop.load.load_weights` returns it (float32, our names), so that a
GGUF, its Hugging Face conversion and its lmforge conversion agree when their weights do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

PREFIX = "sha256:"


def content_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of `state_dict` (see above)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        shape = ",".join(str(n) for n in tensor.shape)
        h.update(f"{name}\0{dtype}\0{shape}\0".encode())
        # a byte view reads any dtype (bf16 and bool too, which numpy cannot hold)
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return PREFIX + h.hexdigest()
