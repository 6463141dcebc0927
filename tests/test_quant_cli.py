"""`lmforge quantize` (compress/commands.py) on a tiny random decoder with SmolLM2's tokenizer,
and SmolLM2 itself: int8 greedy answers equal fp32's."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.compress.quantize import quantize_model
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Engine
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PROMPTS = ("The capital of France is", "def add(a, b):", "The three primary colours are",
           "Once upon a time")
NEAR_TIES = ("Water boils at", "The largest planet is")  # fp32's margins of 0.35 and 0.008


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory) -> str:
    tok = load_weights("smollm2")[2]
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layer=2, n_head=4,
                         n_kv_head=2, d_ff=128, max_seq_len=128)
    model = Transformer(config)
    model.init_weights(std=0.2, seed=0)
    d = tmp_path_factory.mktemp("quant-cli") / "float"
    save_checkpoint(d, config, model.state_dict(), tok)
    return str(d)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_writes_a_directory_generate_loads(float_dir, tmp_path, capsys) -> None:
    out = tmp_path / "int4"
    code, text, _ = run(capsys, "quantize", "--model", float_dir, "--scheme", "int4-g32",
                        "--out", str(out))
    assert code == 0
    assert "quantized to int4-g32 (rtn)" in text and "int4pack_mm × 8" in text
    assert "MB in fp32 →" in text
    fp32, out_mb, share = re.search(r"tensors ([\d.]+) MB in fp32 → ([\d.]+) MB \((\d+)%\)",
                                    text).groups()
    assert float(out_mb) == pytest.approx((out / "model.safetensors").stat().st_size / 1e6,
                                          abs=0.05)
    assert int(share) == round(100 * float(out_mb) / float(fp32))
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"scheme": "int4-g32", "method": "rtn",
                                      "skip": ["lm_head", "ffn.router", "ffn.noise"],
                                      "group_size": 32, "calibration": None, "head": False}
    reference = lmforge.load(float_dir)
    quantize_model(reference.model, "int4-g32")
    loaded = lmforge.load(str(out))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), reference.model(ids))
    code, text, _ = run(capsys, "generate", "--model", str(out), "--prompt", "Hi",
                        "--max-tokens", "4", "--temperature", "0")
    assert code == 0 and text.strip()


def test_gptq_records_its_calibration(float_dir, tmp_path, capsys) -> None:
    out = tmp_path / "gptq"
    code, text, _ = run(capsys, "quantize", "--model", float_dir, "--scheme", "int4-g32",
                        "--method", "gptq", "--calib", str(DATA / "wikitext-2" / "test.txt"),
                        "--calib-samples", "4", "--calib-len", "32", "--out", str(out))
    assert code == 0 and "quantized to int4-g32 (gptq)" in text
    section = json.loads((out / "config.json").read_text())["quantization"]
    assert section["method"] == "gptq"
    assert section["calibration"] == {"file": "test.txt", "samples": 4, "seq_len": 32}
    rtn = lmforge.load(float_dir)
    quantize_model(rtn.model, "int4-g32")
    gptq = lmforge.load(str(out)).model
    assert not torch.equal(gptq.layers[0].attn.qkv.stored_codes(),
                           rtn.model.layers[0].attn.qkv.stored_codes())


@pytest.mark.parametrize("extra, message", [
    (["--scheme", "int3"], "unknown quantization scheme 'int3'"),
    (["--scheme", "int8", "--method", "gptq"], "--method gptq needs --calib"),
    (["--scheme", "int8", "--calib", "x.txt"], "--calib goes with --method gptq"),
    (["--scheme", "int8", "--method", "gptq", "--calib", "/no/such.txt"], "no such file"),
    (["--scheme", "int4-g128"], "64 input features do not split into groups of 128"),
])
def test_clear_errors(float_dir, tmp_path, capsys, extra: list[str], message: str) -> None:
    code, _, err = run(capsys, "quantize", "--model", float_dir, "--out",
                       str(tmp_path / "q"), *extra)
    assert code == 2 and message in err and "Traceback" not in err


def test_refuses_a_quantized_source_and_a_full_output(float_dir, tmp_path, capsys) -> None:
    first = tmp_path / "int8"
    assert run(capsys, "quantize", "--model", float_dir, "--scheme", "int8", "--out",
               str(first))[0] == 0
    code, _, err = run(capsys, "quantize", "--model", str(first), "--scheme", "int4-g32",
                       "--out", str(tmp_path / "again"))
    assert code == 2 and "already quantized (int8)" in err
    code, _, err = run(capsys, "quantize", "--model", float_dir, "--scheme", "int8", "--out",
                       str(first))
    assert code == 2 and "is not empty" in err and "--force" in err
    assert run(capsys, "quantize", "--model", float_dir, "--scheme", "w8a8", "--out",
               str(first), "--force")[0] == 0
    assert json.loads((first / "config.json").read_text())["quantization"]["scheme"] == "w8a8"


@pytest.mark.slow
def test_smollm2_int8_keeps_the_greedy_answers(smollm2) -> None:
    """Per-channel int8 of SmolLM2 (its weights as loaded from the Q4_1 GGUF) keeps the greedy
    tokens of short prompts; teacher-forced on fp32's answers, it picks fp32's token wherever
    fp32's top two logits are 0.5 or more apart (nearer ties may flip: int8 moves logits by
    up to about 1 here). Slow: a copy of SmolLM2, its quantization, 12 generations."""
    config = GenerationConfig(max_tokens=6, temperature=0)
    quantized = copy.deepcopy(smollm2.model)
    quantize_model(quantized, "int8")
    for prompt in PROMPTS + NEAR_TIES:
        ids = smollm2.tokenizer.encode(prompt)
        fp32 = smollm2.engine.generate([ids], config)[0].token_ids
        if prompt in PROMPTS:
            assert Engine(quantized, smollm2.tokenizer).generate([ids], config)[0].token_ids \
                == fp32
        with torch.no_grad():
            path = torch.tensor([ids + fp32])
            ref, got = smollm2.model(path)[0, len(ids) - 1:-1], quantized(path)[0, len(ids) - 1:-1]
        top = ref.topk(2, dim=-1).values
        clear = top[:, 0] - top[:, 1] >= 0.5
        assert torch.equal(got.argmax(-1)[clear], ref.argmax(-1)[clear])
