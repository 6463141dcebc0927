"""The quantized token embedding and tied head (`compress/embedding.py`) on a tiny random
decoder with SmolLM2's tokenizer: logits equal the dequantized reference's up to the kernel's
bf16 rounding, the checkpoint round trip keeps them, generate and eval load it by CLI, an
untied head is quantized with the scheme, and LoRA trains on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from test_quant_model import tiny

import lmforge
from lmforge.adapt.finetune import finetune
from lmforge.cli import main
from lmforge.compress.checkpoint import save_quantized
from lmforge.compress.embedding import QuantEmbedding, QuantTiedHead
from lmforge.compress.linear import QuantLinear
from lmforge.compress.quantize import quantize_model
from lmforge.interop.load import load_weights
from lmforge.model.transformer import Transformer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
IDS = torch.tensor([[1, 17, 400, 9, 3000, 25, 7]])


@pytest.fixture(scope="module")
def tok():
    return load_weights("smollm2")[2]




@pytest.fixture(scope="module")
def head_dir(tok, tmp_path_factory) -> Path:
    model = tiny(tok)
    record = quantize_model(model, "int4-g32", head=True)
    out = tmp_path_factory.mktemp("head") / "int4-head"
    save_quantized(out, model, tok, record)
    return out


def logits(model: Transformer) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def test_head_logits_match_the_dequantized_reference(tok) -> None:
    model = tiny(tok)
    float_embedding = model.embed.weight.detach().clone()
    record = quantize_model(model, "int4-g32", head=True)
    assert record.head and isinstance(model.embed, QuantEmbedding)
    assert isinstance(model.lm_head, QuantTiedHead)
    assert model.embed.codes.dtype == torch.int8
    deq = model.embed.dequantize()
    # int8 per row: each element within half a step of the float matrix
    step = model.embed.scale.unsqueeze(1)
    assert ((deq - float_embedding).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(model.embed(IDS), deq[IDS])
    hidden = model.hidden(IDS)
    with torch.no_grad():
        got, want = model.lm_head(hidden), F.linear(hidden, deq)
    # the kernel rounds h to bf16 (relative 2⁻⁹)
    assert (got - want).abs().max() / want.abs().max() < 1e-2
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_checkpoint_round_trip_keeps_the_logits(head_dir, tok) -> None:
    model = tiny(tok)
    quantize_model(model, "int4-g32", head=True)
    lm = lmforge.load(str(head_dir))
    assert isinstance(lm.model.embed, QuantEmbedding)
    assert lm.model.lm_head.embedding is lm.model.embed
    assert torch.equal(logits(lm.model), logits(model))
    with safe_open(str(head_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("embed.codes").get_dtype() == "I8"
    assert "embed.weight" not in keys and "embed.scale" in keys
    config = json.loads((head_dir / "config.json").read_text())
    assert config["quantization"]["head"] is True
    bf16 = lmforge.load(str(head_dir), dtype="bf16")
    assert bf16.model.embed.codes.dtype == torch.int8
    assert (logits(bf16.model) - logits(model)).abs().max() / logits(model).abs().max() < 0.05


def test_untied_head_takes_the_scheme(tok) -> None:
    model = tiny(tok, tie=False)
    record = quantize_model(model, "int8", head=True)
    assert isinstance(model.lm_head, QuantLinear) and "lm_head" not in record.skip
    assert isinstance(model.embed, QuantEmbedding)


def test_gradients_reach_the_hidden_states(tok) -> None:
    model = tiny(tok)
    quantize_model(model, "int8", head=True)
    hidden = torch.randn(2, 3, 64, requires_grad=True)
    model.lm_head(hidden).sum().backward()
    want = model.embed.dequantize().sum(0).expand(2, 3, 64)
    assert torch.allclose(hidden.grad, want, atol=1e-4)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_generate_and_eval_by_cli(head_dir, capsys) -> None:
    d = str(head_dir)
    code, out = run_cli(capsys, "generate", "--model", d, "--prompt", "Hello",
                        "--max-tokens", "6", "--temperature", "0")
    assert code == 0 and out.strip()
    code, out = run_cli(capsys, "eval", "--model", d, "--input",
                        str(DATA / "wikitext-2" / "test.txt"), "--chars", "1500",
                        "--ctx", "64", "--json")
    assert code == 0 and json.loads(out)["perplexity"] > 1


def test_lora_trains_on_a_quantized_head(head_dir, tmp_path) -> None:
    sst2 = DATA / "sst2"
    for split, n in (("train", 16), ("dev", 8)):
        lines = (sst2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines[:n + 1]) + "\n")
    r = finetune(str(head_dir), "lora", "seqcls", tmp_path / "train.tsv",
                 {"eval_data": str(tmp_path / "dev.tsv"), "out_dir": str(tmp_path / "run"),
                  "max_steps": 2, "eval_every": 2, "eval_batches": 1, "log_every": 1,
                  "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "max_len": 24, "r": 4,
                  "alpha": 8, "targets": "all-linear"}, progress=False)
    assert 0 < r.trainable < r.total
    lm = lmforge.load(str(head_dir), adapter=r.run_dir / "adapter")
    assert isinstance(lm.model.embed, QuantEmbedding)
