"""GGUF Q8_0 / Q4_0 / Q4_1 weights run as they are: their blocks become `QuantizedWeight`s of
`compress/schemes.py` and the projections `QuantLinear`s, with no float copy of them made.

A GGUF block of 32 weights maps exactly onto one group of 32 of our schemes (`interop/quants.py`
has the block layouts):

    GGUF   block                   weight            our scheme   codes        scale  zero
    Q8_0   d:f16, qs[32]:int8      d·q               int8-g32     q            d      -
    Q4_0   d:f16, qs[16] (4-bit)   d·(q − 8)         int4-g32     q (0..15)    d      0
    Q4_1   d:f16, m:f16, qs[16]    d·q + m           int4-g32     q (0..15)    d      m + 8d

since int4's Ŵ = (q − 8)·s + z gives d·q − 8d + m + 8d = d·q + m. Q8_0 and Q4_0 decode bit for
bit as `interop/quants.py` does; Q4_1's zero m + 8d is one fp32 rounding, so Ŵ agrees with
d·q + m within a few ulps of the weight.

`load_native(spec)` (what `lmforge.load(spec, dtype="q")` runs) reads the file once: each
projection whose GGUF tensors all have one of these types and one scheme (q, k and v are
fused into `attn.qkv`, gate and up into `ffn.up`) is stored as `codes`/`scale`/`zero` in the
state dict, with the Q/K rows unpermuted like the float path; every other tensor (norms, the
token embedding, so a tied head too, K-quants) is dequantized as `interop/gguf.py` does. The
transforms put empty `QuantLinear`s at those projections before `api.build_model` assigns the
tensors to them, as a quantized checkpoint loads (`compress/checkpoint.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from torch import nn

from lmforge.compress.linear import choose_kernel
from lmforge.compress.quantize import Quantization, install_empty
from lmforge.compress.schemes import QuantizedWeight, Scheme, pack_int4
from lmforge.errors import LmforgeError
from lmforge.interop import layout
from lmforge.interop.gguf import GGUF_NAMES, config_from_gguf, state_dict_from_tensors, unpermute_qk
from lmforge.interop.gguf_file import GGUFFile
from lmforge.interop.quants import _f16, _unpack, type_name
from lmforge.interop.threads import single_threaded
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import BPETokenizer, Tokenizer

SCHEMES = {T.Q8_0: Scheme.parse("int8-g32"), T.Q4_0: Scheme.parse("int4-g32"),
           T.Q4_1: Scheme.parse("int4-g32")}
Transform = Callable[[nn.Module], object]


def quantized_weight(raw: torch.Tensor, qtype: int, shape: tuple[int, ...], name: str = "tensor"
                     ) -> QuantizedWeight:
    """The `QuantizedWeight` of a GGUF Q8_0/Q4_0/Q4_1 matrix (torch `shape` (out, in)) from
    its raw bytes; the table in the module docstring."""
    if qtype not in SCHEMES:
        raise LmforgeError(f"tensor {name!r} is {type_name(qtype)}; only Q8_0, Q4_0 and Q4_1 "
                           "load as quantized layers (other types are dequantized)")
    qtype = T(qtype)
    out, cols = shape
    block, size = GGML_QUANT_SIZES[qtype]
    if cols % block or raw.numel() != out * cols // block * size:
        raise LmforgeError(f"tensor {name!r} of shape {tuple(shape)} does not hold whole "
                           f"{qtype.name} blocks per row; the file is corrupt")
    b = raw.view(-1, size)  # one row per block, blocks in row-major order
    scale = _f16(b, 0).view(out, cols // block)
    if qtype == T.Q8_0:
        codes = b[:, 2:].contiguous().view(torch.int8).view(out, cols)
        return QuantizedWeight(SCHEMES[qtype], codes, scale)
    start = 2 if qtype == T.Q4_0 else 4
    codes = _unpack(b[:, start:], 4, 16).view(out, cols)  # element order, 0..15
    zero = torch.zeros_like(scale) if qtype == T.Q4_0 else _f16(b, 2).view(out, -1) + 8 * scale
    return QuantizedWeight(SCHEMES[qtype], codes, scale, zero)


def unpermute_weight(w: QuantizedWeight, n_heads: int) -> QuantizedWeight:
    """`unpermute_qk` on the rows of codes, scales and zeros (blocks run along rows, so the
    permutation moves whole rows of each)."""
    zero = None if w.zero is None else unpermute_qk(w.zero, n_heads)
    return QuantizedWeight(w.scheme, unpermute_qk(w.codes, n_heads),
                           unpermute_qk(w.scale, n_heads), zero)


def fuse_weights(pieces: list[QuantizedWeight]) -> QuantizedWeight:
    """One weight whose rows are the pieces' rows in order (as `layout.fuse` stacks them)."""
    zero = None if pieces[0].zero is None else torch.cat([p.zero for p in pieces])
    return QuantizedWeight(pieces[0].scheme, torch.cat([p.codes for p in pieces]),
                           torch.cat([p.scale for p in pieces]), zero)


def native_projections(config: ModelConfig, qtypes: dict[str, int]) -> dict[str, list[str]]:
    """Our projection name → its GGUF tensor names in row order, for every projection whose
    tensors all have a native type of one scheme (`qtypes`: GGUF name → type)."""
    found = {}
    candidates = [] if config.tie_embeddings else [("lm_head", ["output.weight"])]
    for i in range(config.n_layer):
        for ours, pieces in layout.fused_modules(config):
            if pieces[0] in layout.LINEAR_PARTS:
                names = [layout.source_name(GGUF_NAMES, f"layers.{i}.{p}.weight") for p in pieces]
                candidates.append((f"layers.{i}.{ours}", names))
    for ours, names in candidates:
        types = [qtypes.get(n) for n in names]
        if all(t in SCHEMES for t in types) and len({SCHEMES[t] for t in types}) == 1:
            found[ours] = names
    return found


def _read_projection(f: GGUFFile, config: ModelConfig, names: list[str]) -> QuantizedWeight:
    pieces = []
    for name in names:
        info = f.tensors[name]
        w = quantized_weight(f.raw(name), info.qtype, info.shape, name)
        if ".attn_q." in name or ".attn_k." in name:
            w = unpermute_weight(w, config.n_head if ".attn_q." in name else config.n_kv_head)
        pieces.append(w)
    return fuse_weights(pieces) if len(pieces) > 1 else pieces[0]


def stored_tensors(name: str, w: QuantizedWeight, into: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """The state-dict entries of a `QuantLinear` at `name` holding `w` (int4 codes packed,
    written `into` a given uint8 view when there is one)."""
    codes = pack_int4(w.codes) if w.scheme.kind == "int4" else w.codes
    if into is not None:
        codes = into.view(codes.shape).copy_(codes)
    out = {f"{name}.codes": codes, f"{name}.scale": w.scale.float()}
    if w.zero is not None:
        out[f"{name}.zero"] = w.zero.float()
    return out


def int4_buffers(f: GGUFFile, native: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Views of one uint8 buffer, one per projection that will run "int4pack_mm", for its
    packed stored codes. Those layers drop the codes at load (they keep the kernel's layout,
    `compress/linear.py`): one large allocation goes back to the system whole once the state
    dict is gone, where a hundred small ones would stay as holes in the heap, resident."""
    sizes = {}
    for ours, names in native.items():
        rows, cols = sum(f.tensors[n].shape[0] for n in names), f.tensors[names[0]].shape[1]
        scheme = SCHEMES[f.tensors[names[0]].qtype]
        if choose_kernel(scheme, rows, torch.device("cpu")) == "int4pack_mm":
            sizes[ours] = rows * cols // 2
    buffer = torch.empty(sum(sizes.values()), dtype=torch.uint8)
    return dict(zip(sizes, buffer.split(list(sizes.values())), strict=True))


@single_threaded()
def read_native(path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Scheme], dict]:
    """(config, state dict, {projection: scheme}, metadata) of a llama GGUF: the native
    projections as QuantLinear tensors, everything else float32 (module docstring)."""
    with GGUFFile(path) as f:
        config = config_from_gguf(f.metadata, set(f.tensors), path)
        if f.metadata["general.architecture"] != "llama":
            raise LmforgeError(f"--dtype q runs llama-architecture GGUF files; {path} is "
                               f"{f.metadata['general.architecture']}: load it with --dtype "
                               "fp32 or bf16")
        native = native_projections(config, {n: i.qtype for n, i in f.tensors.items()})
        in_native = {n for names in native.values() for n in names}
        # meta tensors of the right shape stand in for native ones through the float path
        tensors = {n: torch.empty(i.shape, device="meta") if n in in_native else f.tensor(n)
                   for n, i in f.tensors.items()}
        state_dict = state_dict_from_tensors(config, tensors, str(path))
        schemes = {}
        buffers = int4_buffers(f, native)
        for ours, names in native.items():
            w = _read_projection(f, config, names)
            del state_dict[f"{ours}.weight"]
            state_dict.update(stored_tensors(ours, w, buffers.get(ours)))
            schemes[ours] = w.scheme
        metadata = f.metadata
    return config, state_dict, schemes, metadata


def native_transforms(schemes: dict[str, Scheme]) -> list[Transform]:
    """`api.build_model` transforms putting empty `QuantLinear`s at the native projections,
    one per scheme (a file may mix Q8_0 and Q4 projections)."""
    by_scheme: dict[Scheme, set[str]] = {}
    for name, scheme in schemes.items():
        by_scheme.setdefault(scheme, set()).add(name)

    def install(quantization: Quantization, names: set[str]) -> Transform:
        return lambda model: install_empty(model, quantization, names)

    return [install(Quantization(s.name, method="gguf", skip=[], group_size=s.group_size), names)
            for s, names in by_scheme.items()]


def load_native(spec: str
                ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None, dict,
                           list[Transform]]:
    """(config, state dict, tokenizer, metadata, transforms) of a GGUF model for
    `lmforge.load(spec, dtype="q")`; any other kind of model is an error saying what to do."""
    from lmforge.interop.load import resolve_model

    source = resolve_model(spec)
    if source.kind != "gguf":
        raise LmforgeError(
            f"--dtype q runs a GGUF file's Q8_0/Q4_0/Q4_1 weights as they are; {spec} is a "
            f"{source.kind} model. Load it in fp32 or bf16, or quantize it with "
            "`lmforge quantize` and load the result")
    config, state_dict, schemes, meta = read_native(source.path)
    if not schemes:
        raise LmforgeError(f"{source.path} has no Q8_0, Q4_0 or Q4_1 projection to run as it "
                           "is; load it with --dtype fp32 or bf16")
    tokenizer = BPETokenizer.from_gguf_metadata(meta) if "tokenizer.ggml.model" in meta \
        else None
    return config, state_dict, tokenizer, meta, native_transforms(schemes)
