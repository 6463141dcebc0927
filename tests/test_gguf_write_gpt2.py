"""GPT-2-like lmforge decoders as GGUF `gpt2` files (interop/gguf_gpt2.py), both ways."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

import lmforge
from lmforge.api import build_model
from lmforge.errors import LmforgeError
from lmforge.interop.gguf import load_gguf
from lmforge.interop.gguf_write import write_gguf
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.bpe_train import train_bpe

# configs/shakespeare-bpe.toml's model, narrower: layernorm, exact gelu, learned positions
SHAKESPEARE = dict(vocab_size=300, d_model=64, n_layer=2, n_head=4, d_ff=256, norm="layernorm",
                   mlp="gelu", position="learned", bias=True, max_seq_len=64)
TEXT = "the cat sat on the mat<|im_end|> hello world 123"


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["the cat sat on the mat", "a dog ran after the cat!", "hello world 123"]
                     * 20, 290, special=["<|endoftext|>", "<|im_end|>"], eos="<|endoftext|>",
                     progress=False)


def gpt2_like(**fields) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = ModelConfig(**{**SHAKESPEARE, **fields})
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(config: ModelConfig, state_dict: dict[str, torch.Tensor], ids: list[int]
           ) -> torch.Tensor:
    with torch.no_grad():
        return build_model(config, state_dict)(torch.tensor([ids]))[0]


@pytest.mark.parametrize("fields", [{}, {"mlp": "gelu_tanh", "tie_embeddings": False,
                                         "n_kv_head": 2}])
def test_gpt2_like_models_round_trip_exactly(tmp_path: Path, tokenizer, fields) -> None:
    config, sd = gpt2_like(**fields)
    write_gguf(tmp_path / "m.gguf", config, sd, tokenizer)
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["general.architecture"].contents() == "gpt2"
    # exact GELU is marked for lmforge; GPT-2's tanh GELU is what the architecture says
    assert ("lmforge.mlp" in fields) == (config.mlp == "gelu")
    config2, sd2, _ = load_gguf(tmp_path / "m.gguf")
    assert config2 == config and sd2.keys() == sd.keys()
    assert all(torch.equal(sd2[k], sd[k]) for k in sd)
    ids = tokenizer.encode(TEXT)
    assert torch.equal(logits(config2, sd2, ids), logits(config, sd, ids))


def test_gpt2_quantized_types(tmp_path: Path, tokenizer) -> None:
    config, sd = gpt2_like()
    counts = write_gguf(tmp_path / "m.gguf", config, sd, tokenizer, "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["position_embd.weight"] == types["blk.1.attn_qkv.weight"] == T.Q8_0
    assert types["blk.1.attn_qkv.bias"] == types["output_norm.bias"] == T.F32
    assert counts == {"Q8_0": 2 + 4 * 2, "F32": 2 + 8 * 2}
    with pytest.raises(LmforgeError, match="--dtype q runs llama-architecture GGUF files"):
        lmforge.load(str(tmp_path / "m.gguf"), dtype="q")


def test_transformers_loads_a_gpt2_export(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    # transformers sizes GPT-2's position table from n_positions (1024), not the file's
    config, sd = gpt2_like(mlp="gelu_tanh", max_seq_len=1024)
    write_gguf(tmp_path / "g.gguf", config, sd, tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="g.gguf",
                                              dtype=torch.float32).eval()
    ids = tokenizer.encode(TEXT)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert (logits(config, sd, ids) - ref).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_llama_cpp_loads_a_gpt2_export(tmp_path: Path, tokenizer) -> None:
    """Runs where llama-cpp-python is installed (the benchmark extra); skipped elsewhere."""
    llama_cpp = pytest.importorskip("llama_cpp")
    config, sd = gpt2_like(mlp="gelu_tanh", tie_embeddings=False, n_kv_head=2)
    write_gguf(tmp_path / "g.gguf", config, sd, tokenizer)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "g.gguf"), logits_all=True, n_ctx=64,
                          n_threads=1, verbose=False, type_k=0, type_v=0)
    ids = tokenizer.encode(TEXT)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    ref = torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32))
    # llama.cpp's GELU reads a float16 table: measured 1.7e-4 here (logits up to ≈ 2)
    assert (logits(config, sd, ids) - ref).abs().max().item() <= 1e-3
