"""`lmforge convert`: any model we read → a Hugging Face or an lmforge checkpoint directory,
or one GGUF file (`--to gguf --type …`, written by `gguf_write.py`).

The directory is written whole under a temporary name beside `out`, then renamed onto it,
so `out` never mixes the files of two models and a failed conversion leaves nothing
behind. A non-empty `out` is refused unless `force`; then it is replaced only once the
new directory is complete.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.hf import save_hf
from lmforge.interop.load import load_weights
from lmforge.interop.tensors import parse_dtype
from lmforge.io import write_directory


def convert(spec: str, to: str, out: str | Path, dtype: str = "fp32", force: bool = False,
            gguf_type: str = "f32") -> None:
    """Write the model `spec` (built-in name, .gguf, HF or lmforge directory) to `out` in
    format `to` ("hf" or "lmforge" with weights in `dtype`, "gguf" with tensors of
    `gguf_type`)."""
    if to == "gguf":
        from lmforge.interop.gguf_write import export_gguf

        export_gguf(spec, out, gguf_type, force)
        return
    torch_dtype = parse_dtype(dtype)

    def write(tmp: Path) -> None:
        # loaded in here, after write_directory has checked `out`: a refusal costs no load
        config, state_dict, tokenizer, _ = load_weights(spec)
        if to == "hf":
            save_hf(config, state_dict, tokenizer, tmp, dtype=torch_dtype)
        else:
            save_checkpoint(tmp, config, state_dict, tokenizer, dtype=torch_dtype)

    write_directory(out, write, force)
