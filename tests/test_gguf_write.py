"""GGUF export (interop/gguf_write.py), read back by our loader, `gguf` and transformers."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

from lmforge.api import build_model
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.gguf import load_gguf
from lmforge.interop.gguf_write import export_gguf, tensor_type, write_gguf
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers import BPETokenizer
from lmforge.tokenizers.bpe_train import train_bpe
from lmforge.tokenizers.training import train_char

TEXT = ["the cat sat on the mat", "a dog ran after the cat!", "hello world 123"] * 20
# GQA, a head size other than d_model / n_head, biases, an untied head; 2-D rows of 64/96
TINY = dict(vocab_size=300, d_model=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=24, d_ff=96,
            bias=True, tie_embeddings=False, max_seq_len=128, rope_theta=5e4, norm_eps=1e-6)
LOSSLESS = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return train_bpe(TEXT, 290, special=["<|endoftext|>", "<|im_end|>"], eos="<|endoftext|>",
                     progress=False)


def tiny(**fields) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = ModelConfig(**{**TINY, **fields})
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():  # non-trivial norms, so a wrong norm mapping shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(config: ModelConfig, state_dict: dict[str, torch.Tensor],
           ids: list[list[int]] | None = None) -> torch.Tensor:
    ids = torch.tensor(ids or [[5, 17, 200, 3, 99, 42, 7, 250]])
    with torch.no_grad():
        return build_model(config, state_dict)(ids)


@pytest.mark.parametrize("kind", list(LOSSLESS))
def test_lossless_types_reimport_with_identical_logits(tmp_path: Path, tokenizer, kind) -> None:
    config, sd = tiny()
    write_gguf(tmp_path / "m.gguf", config, sd, tokenizer, kind)
    config2, sd2, _ = load_gguf(tmp_path / "m.gguf")
    assert config2 == config
    # F16/BF16: exactly the weights cast to that dtype (norms and biases stay F32)
    cast = {k: v if v.dim() == 1 else v.to(LOSSLESS[kind]).float() for k, v in sd.items()}
    assert sd2.keys() == cast.keys()
    for k in sd:
        assert torch.equal(sd2[k], cast[k]), k
    assert torch.equal(logits(config2, sd2), logits(config, cast))


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_quantized_types_reimport_as_their_blocks(tmp_path: Path, tokenizer, kind) -> None:
    config, sd = tiny()
    write_gguf(tmp_path / "m.gguf", config, sd, tokenizer, kind)
    _, sd2, _ = load_gguf(tmp_path / "m.gguf")
    qtype = T[kind.upper()]
    for k, w in sd.items():
        if w.dim() == 1:
            assert torch.equal(sd2[k], w), k
            continue
        # blocks run along rows, and the Q/K permutation and fusing move whole rows
        blocks = gguf.quants.quantize(w.numpy(), qtype)
        assert np.array_equal(sd2[k].numpy(), gguf.quants.dequantize(blocks, qtype)), k
        assert not torch.equal(sd2[k], w)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_gguf_reader_sees_the_expected_types(tmp_path: Path, tokenizer, kind) -> None:
    config, sd = tiny()
    counts = write_gguf(tmp_path / "m.gguf", config, sd, tokenizer, kind)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    want = T[kind.upper()]
    for name, t in types.items():
        is_matrix = name.endswith(".weight") and "norm" not in name
        assert t == (want if is_matrix else T.F32), name
    assert sum(counts.values()) == len(types) == 35
    if want != T.F32:
        assert counts == {want.name: 16, "F32": 19}  # 7 matrices × 2 layers + embd + output
    assert reader.fields["general.architecture"].contents() == "llama"


def test_rows_that_do_not_split_into_blocks_fall_back_to_f16() -> None:
    assert tensor_type("blk.0.ffn_down.weight", (64, 96), T.Q4_0) == T.Q4_0
    assert tensor_type("blk.0.ffn_down.weight", (64, 48), T.Q4_0) == T.F16
    assert tensor_type("blk.0.attn_norm.weight", (64,), T.Q8_0) == T.F32


def test_tokenizer_round_trips(tmp_path: Path, tokenizer) -> None:
    # 300 embedding rows for 290 tokens: the GGUF pads the vocabulary as llama.cpp does
    config, sd = tiny()
    write_gguf(tmp_path / "m.gguf", config, sd, tokenizer)
    _, _, back, _ = load_weights(tmp_path / "m.gguf")
    assert back.tokens[:290] == tokenizer.tokens and back.tokens[290] == "[PAD290]"
    assert back.merges == tokenizer.merges
    assert back.special.eos == tokenizer.special.eos == 0
    assert back.added.special_ids == tokenizer.added.special_ids == {0, 1}
    text = "the cat<|im_end|> sat 123 on a hat<|endoftext|>"
    assert back.encode(text) == tokenizer.encode(text)
    assert tokenizer.pre.name == "gpt2" and back.pre.name == "gpt-2"  # llama.cpp's name
    assert back.pre.patterns == tokenizer.pre.patterns


def test_transformers_loads_a_tiny_export(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    config, sd = tiny(bias=False)  # transformers' GGUF loader maps no Llama biases
    write_gguf(tmp_path / "tiny.gguf", config, sd, tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf",
                                              dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 200, 3, 99, 42, 7, 250]])
    with torch.no_grad():
        ref = hf(ids).logits
    assert (logits(config, sd) - ref).abs().max().item() <= 1e-5


def test_models_neither_llama_nor_gpt2_are_refused(tmp_path: Path, tokenizer) -> None:
    config = ModelConfig(vocab_size=290, d_model=64, n_layer=2, n_head=4, mlp="gelu",
                         position="learned", bias=True, max_seq_len=64)
    sd = Transformer(config).state_dict()
    with pytest.raises(LmforgeError, match="for llama this model has mlp='gelu', "
                                           "position='learned'.*for gpt2 norm='rmsnorm'"):
        write_gguf(tmp_path / "m.gguf", config, sd, tokenizer)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("field", [{"moe_experts": 4}, {"scale_attention": False},
                                   {"norm_position": "post", "family": "decoder"}])
def test_fields_gguf_cannot_express_are_refused(tmp_path: Path, tokenizer, field) -> None:
    config = ModelConfig(**{**TINY, **field})
    sd = Transformer(config).state_dict()
    name = next(iter(field))
    with pytest.raises(LmforgeError, match=f"this model has {name}="):
        write_gguf(tmp_path / "m.gguf", config, sd, tokenizer)


def test_non_bpe_tokenizer_is_refused(tmp_path: Path) -> None:
    config, sd = tiny(vocab_size=40)
    chars = train_char(["abc def"], 40, progress=False)
    with pytest.raises(LmforgeError, match="byte-level BPE"):
        write_gguf(tmp_path / "m.gguf", config, sd, chars)


def test_cli_convert_to_gguf(tmp_path: Path, tokenizer, capsys) -> None:
    config, sd = tiny()
    save_checkpoint(tmp_path / "ckpt", config, sd, tokenizer)
    out = tmp_path / "m.gguf"
    argv = ["convert", "--model", str(tmp_path / "ckpt"), "--to", "gguf", "--type", "q8_0",
            "--out", str(out)]
    assert main(argv) == 0
    assert {t.tensor_type for t in gguf.GGUFReader(out).tensors} == {T.Q8_0, T.F32}
    assert main(argv) == 2  # an existing file needs --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv[:-3], "bf16", "--out", str(out), "--force"]) == 0
    assert T.BF16 in {t.tensor_type for t in gguf.GGUFReader(out).tensors}
    with pytest.raises(LmforgeError, match="unknown GGUF type"):
        export_gguf(str(tmp_path / "ckpt"), tmp_path / "x.gguf", "q5_k")


@pytest.mark.slow
def test_smollm2_f32_export_matches_transformers(tmp_path: Path, smollm2) -> None:
    from transformers import AutoModelForCausalLM

    export_gguf("smollm2", tmp_path / "smollm2.gguf", "f32")
    _, ours, _, _ = load_weights("smollm2")
    _, back, _ = load_gguf(tmp_path / "smollm2.gguf")
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="smollm2.gguf",
                                              dtype=torch.float32).eval()
    ids = torch.tensor([smollm2.tokenizer.encode("The capital of France is Paris, and the "
                                                 "capital of Spain is")])
    with torch.no_grad():
        diff = (smollm2.model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.slow
def test_llama_cpp_loads_a_tiny_export(tmp_path: Path, tokenizer) -> None:
    """Runs where llama-cpp-python is installed (the benchmark extra); skipped elsewhere."""
    llama_cpp = pytest.importorskip("llama_cpp")
    config, sd = tiny()  # biases, GQA, key_length ≠ d_model / n_head, untied head, padding
    write_gguf(tmp_path / "tiny.gguf", config, sd, tokenizer)
    # an f32 KV cache (type 0): the default f16 cache alone moves logits by ~1e-2
    llm = llama_cpp.Llama(model_path=str(tmp_path / "tiny.gguf"), logits_all=True, n_ctx=64,
                          n_threads=1, verbose=False, type_k=0, type_v=0)
    text = "the cat sat on the mat<|im_end|> hello world 123"
    ids = tokenizer.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    ref = torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32))
    assert (logits(config, sd, [ids])[0] - ref).abs().max().item() <= 1e-4
