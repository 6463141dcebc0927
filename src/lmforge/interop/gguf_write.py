"""lmforge decoder → GGUF (llama.cpp) file, written with the `gguf` package's `GGUFWriter`.

The inverse of `gguf.py`: the same metadata keys, tensor names (`GGUF_NAMES`) and Q/K row
order (`permute_qk`, the inverse of `unpermute_qk`), so `load_gguf(write_gguf(…))` gives back
the state dict: bit for bit at F32, the weights cast to fp16/bf16 at F16/BF16. GPT-2-like
models are written as GGUF's `gpt2` architecture (`gguf_gpt2.py`).

Tensor types, as llama.cpp's `convert_hf_to_gguf.py --outtype` writes them:

    --type   2-D weights (token embedding and head included)    1-D (norms, biases)
    f32      F32                                                 F32
    f16      F16  (IEEE half, torch's round to nearest even)     F32
    bf16     BF16 (torch's round to nearest even)                F32
    q8_0     Q8_0: per block of 32, d = max|w| / 127, q = round(w / d)        F32
    q4_0     Q4_0: per block of 32, d = w_absmax_signed / -8, q = round(w / d) + 8   F32
    q4_1     Q4_1: per block of 32, d = (max − min) / 15, m = min, q = round((w − m) / d)  F32

Q8_0, Q4_0 and Q4_1 blocks come from `gguf.quants.quantize` (llama.cpp's reference quantizers). A
matrix whose rows do not split into blocks of 32 falls back to F16, as llama.cpp does.

Two architectures can be written, the two `gguf.py` reads back: `llama` (a pre-norm decoder
with RMSNorm, SwiGLU, RoPE; biases allowed) and `gpt2` (pre-norm LayerNorm with biases, GELU,
learned positions). `architecture` picks the one whose metadata reads back as the model's
config. The tokenizer must be byte-level BPE (GGUF `tokenizer.ggml.model = "gpt2"`); see
`tokenizer_metadata`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as T

from lmforge.errors import LmforgeError
from lmforge.interop import layout
from lmforge.interop.gguf import GGUF_NAMES, config_from_gguf, map_qk, permute_qk
from lmforge.interop.gguf_gpt2 import gpt2_metadata, gpt2_tensors
from lmforge.interop.threads import single_threaded
from lmforge.io import atomic_write
from lmforge.model.config import ModelConfig
from lmforge.tokenizers.base import Tokenizer
from lmforge.tokenizers.bpe import BPETokenizer

TYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0,
         "q4_1": T.Q4_1}
FILE_TYPES = {T.F32: gguf.LlamaFileType.ALL_F32, T.F16: gguf.LlamaFileType.MOSTLY_F16,
              T.BF16: gguf.LlamaFileType.MOSTLY_BF16, T.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
              T.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, T.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1}
# our pre-tokenizer name → llama.cpp's, where they differ (llama.cpp refuses "gpt2")
LLAMA_CPP_PRE = {"gpt2": "gpt-2"}
_TORCH_HALF = {T.F16: torch.float16, T.BF16: torch.bfloat16}
_BYTES = {T.F16: np.float16, T.BF16: np.uint16}  # numpy dtypes holding their bits


def parse_type(name: str) -> T:
    """The GGML tensor type of a `--type` name (f32, f16, bf16, q8_0, q4_0, q4_1)."""
    try:
        return TYPES[name.lower()]
    except KeyError:
        raise LmforgeError(f"unknown GGUF type {name!r}; choose one of "
                           f"{', '.join(TYPES)}") from None


def llama_metadata(config: ModelConfig) -> dict[str, int | float]:
    """The `llama.*` keys of `config`, as `gguf.config_from_gguf` reads them back."""
    meta: dict[str, int | float] = {
        "block_count": config.n_layer, "context_length": config.max_seq_len,
        "embedding_length": config.d_model, "feed_forward_length": config.d_ff,
        "attention.head_count": config.n_head, "attention.head_count_kv": config.n_kv_head,
        "rope.freq_base": float(config.rope_theta), "rope.dimension_count": config.head_dim,
        "attention.layer_norm_rms_epsilon": float(config.norm_eps),
        "vocab_size": config.vocab_size}
    if config.head_dim != config.d_model // config.n_head:
        # llama.cpp takes the head size from key_length (default d_model / n_head)
        meta["attention.key_length"] = meta["attention.value_length"] = config.head_dim
    return {f"llama.{k}": v for k, v in meta.items()}


def _same(ours, back) -> bool:
    if isinstance(ours, float):  # GGUF stores these as float32
        return bool(np.float32(ours) == np.float32(back))
    return ours == back


def mismatches(config: ModelConfig, arch: str) -> list[str]:
    """The fields of `config` that GGUF architecture `arch` cannot carry: those that differ in
    the config `gguf.config_from_gguf` reads back from our metadata (so a field added later
    is refused, never dropped)."""
    names = set() if config.tie_embeddings else {"output.weight"}
    if config.bias:
        names.add("blk.0.attn_q.bias")
    metadata = ARCHITECTURES[arch][0](config)
    back = config_from_gguf({"general.architecture": arch, **metadata}, names)
    return [f"{k}={v!r}" for k, v in dataclasses.asdict(config).items()
            if not _same(v, getattr(back, k))]


def architecture(config: ModelConfig) -> str:
    """The GGUF architecture that describes `config` whole; LmforgeError when none does."""
    wrong = {arch: mismatches(config, arch) for arch in ARCHITECTURES}
    for arch, fields in wrong.items():
        if not fields:
            return arch
    raise LmforgeError(
        "GGUF export writes llama models (a pre-norm decoder with rmsnorm, swiglu, rope) and "
        "GPT-2-like ones (pre-norm layernorm with biases, gelu, learned positions); for "
        f"llama this model has {', '.join(wrong['llama'])}, for gpt2 "
        f"{', '.join(wrong['gpt2'])}. Keep it as an lmforge checkpoint or a Hugging Face "
        "directory (`lmforge convert --to lmforge|hf`)")


def tensor_type(name: str, shape: tuple[int, ...], qtype: T) -> T:
    """The type a tensor is stored as: 1-D stays F32; blocks need rows of 32k weights."""
    if len(shape) < 2:
        return T.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else T.F16


def encode_tensor(t: torch.Tensor, qtype: T) -> np.ndarray:
    """The bytes (as the numpy array GGUFWriter takes) of `t` stored as `qtype`."""
    t = t.detach().float().contiguous()
    if qtype == T.F32:
        return t.numpy()
    if qtype in _TORCH_HALF:
        # torch's cast, so an F16/BF16 export equals the model cast to that dtype
        half = t.to(_TORCH_HALF[qtype])
        return half.view(torch.int16).numpy().view(_BYTES[qtype])
    return gguf.quants.quantize(t.numpy(), qtype)


def gguf_tensors(config: ModelConfig, state_dict: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """GGUF name → tensor of our state dict (Q/K rows permuted as llama.cpp stores them)."""
    parts = layout.split(config, state_dict)
    map_qk(config, parts, permute_qk)
    return layout.scatter(GGUF_NAMES, parts)


# GGUF architecture → (its metadata of a config, its tensors of our state dict)
ARCHITECTURES = {"llama": (llama_metadata, gguf_tensors), "gpt2": (gpt2_metadata, gpt2_tensors)}


def add_model_metadata(w: gguf.GGUFWriter, config: ModelConfig, arch: str, name: str,
                       qtype: T) -> None:
    """The `general.*` keys and the architecture's (what `gguf.config_from_gguf` reads)."""
    w.add_name(name)
    w.add_file_type(FILE_TYPES[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in ARCHITECTURES[arch][0](config).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)


def tokenizer_metadata(w: gguf.GGUFWriter, tokenizer: BPETokenizer, vocab_size: int) -> None:
    """The `tokenizer.*` keys `BPETokenizer.from_gguf_metadata` reads, inverted.

    Token types (llama.cpp's): 3 control = a special added token, 4 user-defined = a plain
    added token, 1 normal = the rest; ids the model has beyond the tokenizer's vocabulary are
    `[PAD{i}]` of type 5 (unused), as llama.cpp's converter pads them.
    """
    if tokenizer.pre.name == "custom":
        raise LmforgeError("the tokenizer's pre-tokenizer matches none GGUF names (tokenizer."
                           "ggml.pre), so llama.cpp could not split text as it does; export "
                           "to a Hugging Face directory instead")
    if tokenizer.nfc:
        raise LmforgeError("the tokenizer NFC-normalizes text, which GGUF tokenizer metadata "
                           "cannot say; export to a Hugging Face directory instead")
    n = tokenizer.vocab_size
    if n > vocab_size:
        raise LmforgeError(f"the tokenizer has {n} tokens but the model only {vocab_size} "
                           "embedding rows; they do not belong together")
    types = [gguf.TokenType.NORMAL] * n
    for t in tokenizer.added.tokens:
        types[t.id] = gguf.TokenType.CONTROL if t.special else gguf.TokenType.USER_DEFINED
    padding = range(n, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(LLAMA_CPP_PRE.get(tokenizer.pre.name, tokenizer.pre.name))
    w.add_token_list([*tokenizer.tokens, *(f"[PAD{i}]" for i in padding)])
    w.add_token_types([*types, *(gguf.TokenType.UNUSED for _ in padding)])
    w.add_token_merges([f"{a} {b}" for a, b in tokenizer.merges])
    special = tokenizer.special
    for role, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        if getattr(special, role) is not None:
            add(getattr(special, role))
    w.add_add_bos_token(special.add_bos)
    w.add_add_eos_token(special.add_eos)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)


@single_threaded()
def write_gguf(path: str | Path, config: ModelConfig, state_dict: dict[str, torch.Tensor],
               tokenizer: Tokenizer | None, qtype: str | T = "f32", name: str = "lmforge"
               ) -> dict[str, int]:
    """Write a llama or gpt2 GGUF file atomically; returns {type name: tensor count}."""
    arch = architecture(config)
    qtype = parse_type(qtype) if isinstance(qtype, str) else qtype
    if tokenizer is not None and not isinstance(tokenizer, BPETokenizer):
        raise LmforgeError(f"GGUF files hold byte-level BPE tokenizers here; this model's is a "
                           f"{type(tokenizer).__name__}, which llama.cpp cannot rebuild")
    tensors = ARCHITECTURES[arch][1](config, state_dict)
    counts: dict[str, int] = {}

    def write(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        add_model_metadata(w, config, arch, name, qtype)
        if tokenizer is not None:
            tokenizer_metadata(w, tokenizer, config.vocab_size)
        for gguf_name, t in tensors.items():
            kind = tensor_type(gguf_name, tuple(t.shape), qtype)
            counts[kind.name] = counts.get(kind.name, 0) + 1
            w.add_tensor(gguf_name, encode_tensor(t, kind), raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(path, write)
    return counts


def export_gguf(spec: str, out: str | Path, qtype: str = "f32", force: bool = False
                ) -> dict[str, int]:
    """`lmforge convert --to gguf`: the model `spec` (anything `load_weights` reads) as one
    GGUF file `out`; an existing file is replaced only with `force`."""
    from lmforge.interop.load import load_weights, resolve_model

    out, qtype = Path(out), parse_type(qtype)  # checked before the model loads
    if out.is_dir():
        raise LmforgeError(f"{out} is a directory; --to gguf writes one file, e.g. "
                           f"{out / 'model.gguf'}")
    if out.exists() and not force:
        raise LmforgeError(f"{out} exists; choose a new file name, or pass --force to "
                           "replace it")
    config, state_dict, tokenizer, _ = load_weights(spec)
    return write_gguf(out, config, state_dict, tokenizer, qtype,
                      name=resolve_model(spec).name.removesuffix(".gguf"))
