"""Other projects' model files ↔ lmforge's config and state dict (our names only past here).

- `quants.py`      GGUF tensor types → float32 (F32/F16/BF16, Q4_0 … Q8_0, Q2_K … Q6_K)
- `gguf_file.py`   the GGUF container: memory-mapped header and tensor reader
- `gguf.py`        GGUF `llama` models → ModelConfig + state dict (undoes the Q/K permutation)
- `gguf_gpt2.py`   GGUF `gpt2` models ↔ GPT-2-like decoders (names and metadata)
- `gguf_write.py`  any llama or GPT-2-like decoder → a GGUF file (F32 … Q4_1; `convert --to gguf`)
- `layout.py`      Llama-style weights: our fused names ↔ per-projection parts ↔ their names
- `tensors.py`     safetensors in/out (never pickles), dtype names
- `hf.py`          Hugging Face Llama directories, both ways
- `checkpoint.py`  lmforge checkpoint and run directories
- `registry.py`    built-in models shipped in pip packages
- `load.py`        `resolve_model` / `load_weights`: any of the above, detected by content
"""

from lmforge.interop.checkpoint import load_checkpoint, save_checkpoint
from lmforge.interop.gguf import load_gguf, read_gguf_metadata
from lmforge.interop.hf import load_hf, save_hf
from lmforge.interop.load import ModelSource, load_weights, resolve_model
from lmforge.interop.registry import list_models

__all__ = ["ModelSource", "list_models", "load_checkpoint", "load_gguf", "load_hf",
           "load_weights", "read_gguf_metadata", "resolve_model", "save_checkpoint", "save_hf"]
