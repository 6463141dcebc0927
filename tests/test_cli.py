"""The `lmforge` command line end to end on the real SmolLM2 model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import SHARED_DATA

from lmforge.cli import main
from lmforge.generate.config import GenerationConfig


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_builtins(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2" in out and "minilm" in out and "MB" in out


@pytest.mark.parametrize("flags", [[], pytest.param(["--compile"], marks=pytest.mark.slow)],
                         ids=["eager", "compiled"])
def test_generate_greedy_equals_the_api(capsys, smollm2, flags):
    """Also with --compile (SmolLM2 compiles in about a minute on two cores: slow)."""
    prompt = "The three primary colours are"
    code, out, err = run(capsys, "generate", "--model", "smollm2", "--prompt", prompt,
                         "--max-tokens", "12", "--temperature", "0", "--stats", *flags)
    api = smollm2.engine.generate([smollm2.tokenizer.encode(prompt)],
                                  GenerationConfig(max_tokens=12, temperature=0))[0].text
    assert code == 0 and out == api + "\n"
    assert "prompt tokens: 5" in err and "decode:" in err and "tokens/s" in err


def test_generate_chat_with_sampling_flags(capsys):
    code, out, _ = run(capsys, "generate", "--model", "smollm2", "--chat", "--prompt",
                       "Name a fruit.", "--max-tokens", "16", "--temperature", "0.7",
                       "--top-p", "0.9", "--top-k", "40", "--repetition-penalty", "1.1",
                       "--seed", "3", "--stop", "\n", "--n", "2")
    assert code == 0 and "[0]" in out and "[1]" in out


def test_bad_input_gives_one_clear_line(capsys, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    code, _, err = run(capsys, "generate", "--model", str(bad), "--prompt", "x")
    assert code == 2 and err.startswith("error: ") and "not a GGUF file" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "generate", "--model", "nosuchmodel", "--prompt", "x")
    assert code == 2 and "no model 'nosuchmodel'" in err
    code, _, err = run(capsys, "generate", "--model", "smollm2", "--prompt", "x",
                       "--top-p", "1.5")
    assert code == 2 and "top_p" in err
    code, _, err = run(capsys, "eval", "--model", "smollm2", "--input", str(tmp_path / "no"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "chat", "--api", "http://127.0.0.1:9", "--compile")
    assert code == 2 and "--compile goes with --model" in err


def test_eval_reports_perplexity(capsys):
    text = SHARED_DATA / "wikitext-2" / "test.txt"
    code, out, _ = run(capsys, "eval", "--model", "smollm2", "--input", str(text),
                       "--chars", "3000", "--ctx", "256", "--json")
    record = json.loads(out)
    assert code == 0 and record["scored"] == record["tokens"] - -(-record["tokens"] // 256)
    assert 5 < record["perplexity"] < 100 and 0.3 < record["bits_per_byte"] < 2


@pytest.mark.parametrize("fmt", ["hf", "lmforge"])
def test_convert_keeps_the_logits(capsys, tmp_path, smollm2, fmt):
    out_dir = tmp_path / fmt
    code, out, _ = run(capsys, "convert", "--model", "smollm2", "--to", fmt, "--out",
                       str(out_dir))
    assert code == 0
    import lmforge

    back = lmforge.load(str(out_dir))
    ids = torch.tensor([smollm2.tokenizer.encode("Convert me, please.")])
    theirs = smollm2.model.state_dict()
    assert all(torch.equal(t, theirs[name]) for name, t in back.model.state_dict().items())
    with torch.inference_mode():
        # equal weights; allow for kernels whose summation order depends on memory layout
        diff = (back.model(ids) - smollm2.model(ids)).abs().max().item()
    assert diff <= 1e-4
    assert back.tokenizer.encode("héllo <|im_end|> 123") == smollm2.tokenizer.encode(
        "héllo <|im_end|> 123")
    if fmt == "hf":
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
        with torch.inference_mode():  # the parity criterion of test_smollm2: last position
            diff = (hf(ids).logits[0, -1] - smollm2.model(ids)[0, -1]).abs().max().item()
        assert diff <= 1e-4


def test_chat_session_over_stdin():
    """A real process: two turns, a reset, then /exit."""
    lines = "Say hello.\nAnd goodbye?\n/reset\nHi again\n/exit\n"
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "chat", "--model", "smollm2", "--max-tokens",
         "12", "--temperature", "0", "--system", "You are brief."],
        input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") == 5 and "(history cleared)" in proc.stderr
