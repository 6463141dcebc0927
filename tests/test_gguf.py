"""GGUF reading: the real SmolLM2 file, tiny hand-made files, and broken files."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

from lmforge.errors import LmforgeError
from lmforge.interop.gguf import load_gguf, permute_qk, read_gguf_metadata, unpermute_qk
from lmforge.interop.gguf_file import GGUFFile
from lmforge.interop.registry import model_path

SMOL = model_path("smollm2")


@pytest.fixture(scope="module")
def smol():
    return load_gguf(SMOL)


# -- the real file ---------------------------------------------------------------------------

def test_smollm2_config(smol) -> None:
    config, _, _ = smol
    assert (config.n_layer, config.d_model, config.n_head, config.n_kv_head) == (30, 576, 9, 3)
    assert (config.head_dim, config.d_ff, config.vocab_size) == (64, 1536, 49152)
    assert (config.rope_theta, config.norm_eps, config.max_seq_len) == (100000.0, 1e-5, 8192)
    assert (config.family, config.norm, config.mlp, config.position) == \
        ("decoder", "rmsnorm", "swiglu", "rope")
    assert config.tie_embeddings and not config.bias


def test_smollm2_state_dict_names_shapes_dtype(smol) -> None:
    config, sd, _ = smol
    assert "lm_head.weight" not in sd
    assert sd["embed.weight"].shape == (49152, 576)
    assert sd["layers.0.attn.qkv.weight"].shape == (64 * (9 + 2 * 3), 576)
    assert sd["layers.29.ffn.up.weight"].shape == (2 * 1536, 576)
    assert sd["layers.29.ffn.down.weight"].shape == (576, 1536)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in sd.values())
    assert len(sd) == 2 + 6 * config.n_layer


def test_every_tensor_matches_the_gguf_package_reader() -> None:
    reader = gguf.GGUFReader(SMOL)
    with GGUFFile(SMOL) as f:
        assert set(f.tensors) == {t.name for t in reader.tensors}
        for t in reader.tensors:
            ref = gguf.quants.dequantize(t.data, t.tensor_type)
            got = f.tensor(t.name)
            assert tuple(got.shape) == tuple(reversed([int(d) for d in t.shape])), t.name
            np.testing.assert_array_equal(got.numpy(), ref.reshape(got.shape), err_msg=t.name)


def test_metadata_is_plain_python() -> None:
    meta = read_gguf_metadata(SMOL)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30 and type(meta["llama.block_count"]) is int
    assert meta["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # shortest decimal of the f32
    tokens = meta["tokenizer.ggml.tokens"]
    assert type(tokens) is list and len(tokens) == 49152 and tokens[1] == "<|im_start|>"
    assert type(meta["tokenizer.ggml.token_type"][0]) is int
    assert meta["tokenizer.ggml.merges"][0].count(" ") == 1
    assert meta["tokenizer.ggml.add_bos_token"] is False


def test_metadata_equals_the_gguf_package_reader() -> None:
    """Every key and value as gguf.GGUFReader reads it (floats: the same f32 value)."""
    ours = read_gguf_metadata(SMOL)
    reader = gguf.GGUFReader(SMOL)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, float):
            assert np.float32(ours[key]) == np.float32(value), key
        else:
            assert ours[key] == value, key


# -- tiny hand-made files -------------------------------------------------------------------

def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp writes it (the reference)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


TINY = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, head_dim=16, d_ff=96, vocab=40)


def tiny_weights(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-layout (unpermuted) random weights of a tiny llama, keyed by GGUF name."""
    rng = np.random.default_rng(seed)
    c = TINY
    shapes = {"token_embd": (c["vocab"], c["d_model"]), "output_norm": (c["d_model"],)}
    if not tied:
        shapes["output"] = (c["vocab"], c["d_model"])
    for i in range(c["n_layer"]):
        kv = c["n_kv_head"] * c["head_dim"]
        shapes |= {f"blk.{i}.attn_norm": (64,), f"blk.{i}.ffn_norm": (64,),
                   f"blk.{i}.attn_q": (64, 64), f"blk.{i}.attn_k": (kv, 64),
                   f"blk.{i}.attn_v": (kv, 64), f"blk.{i}.attn_output": (64, 64),
                   f"blk.{i}.ffn_gate": (96, 64), f"blk.{i}.ffn_up": (96, 64),
                   f"blk.{i}.ffn_down": (64, 96)}
    return {f"{n}.weight": rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def write_gguf(path: Path, weights: dict[str, np.ndarray], arch: str = "llama",
               qtype: T = T.F32, raw_types: dict[str, T] | None = None) -> Path:
    c = TINY
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c["n_layer"])
    w.add_context_length(256)
    w.add_embedding_length(c["d_model"])
    w.add_feed_forward_length(c["d_ff"])
    w.add_head_count(c["n_head"])
    w.add_head_count_kv(c["n_kv_head"])
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(c["head_dim"])
    w.add_token_list([f"t{i}" for i in range(c["vocab"])])
    for name, value in weights.items():
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = c["n_head"] if "attn_q" in name else c["n_kv_head"]
            value = llama_cpp_permute(value, heads)
        if name in (raw_types or {}):
            w.add_tensor(name, value.view(np.uint8), raw_dtype=raw_types[name])
        elif value.ndim == 2 and qtype != T.F32:
            w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_shape=None, raw_dtype=qtype)
        else:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_maps_and_unpermutes_exactly(tmp_path: Path, tied: bool) -> None:
    src = tiny_weights(tied)
    config, sd, meta = load_gguf(write_gguf(tmp_path / "tiny.gguf", src))
    assert (config.n_layer, config.d_model, config.n_head, config.n_kv_head, config.head_dim,
            config.d_ff, config.vocab_size) == (2, 64, 4, 2, 16, 96, 40)
    assert (config.rope_theta, config.norm_eps, config.max_seq_len) == (50000.0, 1e-6, 256)
    assert config.tie_embeddings == tied and ("lm_head.weight" in sd) != tied
    t = {n: torch.from_numpy(v) for n, v in src.items()}
    for i in range(2):
        b = f"blk.{i}."
        qkv = torch.cat([t[b + "attn_q.weight"], t[b + "attn_k.weight"], t[b + "attn_v.weight"]])
        assert torch.equal(sd[f"layers.{i}.attn.qkv.weight"], qkv)
        up = torch.cat([t[b + "ffn_gate.weight"], t[b + "ffn_up.weight"]])
        assert torch.equal(sd[f"layers.{i}.ffn.up.weight"], up)
        assert torch.equal(sd[f"layers.{i}.attn.out.weight"], t[b + "attn_output.weight"])
    assert torch.equal(sd["embed.weight"], t["token_embd.weight"])


@pytest.mark.parametrize("qtype", [T.F16, T.Q8_0, T.Q4_1])
def test_tiny_llama_quantized(tmp_path: Path, qtype: T) -> None:
    src = tiny_weights(tied=True)
    _, sd, _ = load_gguf(write_gguf(tmp_path / "tiny.gguf", src, qtype=qtype))
    want = np.concatenate([src["blk.1.ffn_gate.weight"], src["blk.1.ffn_up.weight"]])
    # quantization error bounds: half a step of the block scale
    tol = {T.F16: 2e-3, T.Q8_0: 0.02, T.Q4_1: 0.5}[qtype]
    assert np.abs(sd["layers.1.ffn.up.weight"].numpy() - want).max() < tol


def test_permute_and_unpermute_are_inverse() -> None:
    w = torch.randn(6 * 8, 5)
    assert torch.equal(unpermute_qk(permute_qk(w, 6), 6), w)
    ref = llama_cpp_permute(w.numpy(), 6)
    assert np.array_equal(permute_qk(w, 6).numpy(), ref)
    assert not torch.equal(permute_qk(w, 6), w)


# -- errors ----------------------------------------------------------------------------------

def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LmforgeError, match="no such file"):
        load_gguf(tmp_path / "absent.gguf")
    with pytest.raises(LmforgeError, match="is a directory"):
        load_gguf(tmp_path)


def test_non_gguf_and_flipped_magic(tmp_path: Path) -> None:
    (tmp_path / "notes.gguf").write_text('{"not": "gguf"}')
    with pytest.raises(LmforgeError, match="is not a GGUF file"):
        load_gguf(tmp_path / "notes.gguf")
    head = bytearray(SMOL.read_bytes()[:4096])
    head[0] ^= 0xFF
    (tmp_path / "flipped.gguf").write_bytes(bytes(head))
    with pytest.raises(LmforgeError, match="flipped.gguf is not a GGUF file"):
        read_gguf_metadata(tmp_path / "flipped.gguf")


@pytest.mark.parametrize("keep", [6, 4096, 1_000_000, 60_000_000])
def test_truncated_copies(tmp_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.gguf"
    with open(SMOL, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(LmforgeError, match=r"cut\.gguf is truncated"):
        load_gguf(cut)


def test_corrupt_string_length_and_version(tmp_path: Path) -> None:
    data = bytearray(SMOL.read_bytes()[:2_000_000])
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data[:24]) + struct.pack("<Q", 2**40) + bytes(data[32:]))
    with pytest.raises(LmforgeError, match="truncated or corrupt: a field at byte 32"):
        read_gguf_metadata(bad)
    bad.write_bytes(bytes(data[:4]) + struct.pack("<I", 1) + bytes(data[8:]))
    with pytest.raises(LmforgeError, match="GGUF version 1"):
        read_gguf_metadata(bad)


def test_full_copy_loads(tmp_path: Path, smol) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(SMOL, copy)
    _, sd, _ = load_gguf(copy)
    assert torch.equal(sd["layers.3.attn.qkv.weight"], smol[1]["layers.3.attn.qkv.weight"])


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bert.gguf", {"token_embd.weight": np.zeros((40, 64), "f4")},
                      arch="bert")
    with pytest.raises(LmforgeError,
                       match="architecture 'bert' is not supported; supported: llama"):
        load_gguf(path)


def test_unsupported_tensor_type_names_tensor(tmp_path: Path) -> None:
    src = tiny_weights(tied=True)
    src["blk.0.ffn_up.weight"] = np.zeros((96, 66), np.uint8)  # one IQ2_XXS block per row
    path = write_gguf(tmp_path / "iq.gguf", src, raw_types={"blk.0.ffn_up.weight": T.IQ2_XXS})
    with pytest.raises(LmforgeError, match="'blk.0.ffn_up.weight' has GGUF type IQ2_XXS"):
        load_gguf(path)


def test_missing_and_unknown_tensors(tmp_path: Path) -> None:
    src = tiny_weights(tied=True)
    del src["blk.1.ffn_down.weight"]
    with pytest.raises(LmforgeError, match="no tensor 'blk.1.ffn_down.weight'"):
        load_gguf(write_gguf(tmp_path / "missing.gguf", src))
    src = tiny_weights(tied=True) | {"blk.0.attn_sinks.weight": np.zeros(4, np.float32)}
    with pytest.raises(LmforgeError, match="attn_sinks"):
        load_gguf(write_gguf(tmp_path / "extra.gguf", src))
