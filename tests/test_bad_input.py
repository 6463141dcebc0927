"""Bad input tried as a new user would (issue #17): each is one clear line (or a correct
result), on the CLI and on the API. Tiny random checkpoints (a character tokenizer, a
32-token window) stand in for trained runs; SmolLM2 gives the 2,048-token window of the
issue's report and a live server."""

from __future__ import annotations

import json
import string
from pathlib import Path

import httpx
import pytest
from serve_helpers import KEY, start_server

from lmforge.cli import build_parser, main
from lmforge.errors import LmforgeError, excerpt
from lmforge.generate.config import MAX_STOP_CHARS, GenerationConfig
from lmforge.generate.context import fit_context
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.load import load_weights
from lmforge.io import write_directory
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.char import CharTokenizer

WINDOW = 32  # the tiny models' context window


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint directories of a tiny random decoder and encoder-decoder (window 32)."""
    tok = CharTokenizer.from_text(string.ascii_lowercase + " ")
    dirs = {}
    for family, extra in [("decoder", {}),
                          ("encoder_decoder", dict(position="relative", n_encoder_layer=2))]:
        config = ModelConfig(family=family, vocab_size=tok.vocab_size, d_model=32, n_layer=2,
                             n_head=4, n_kv_head=2, d_ff=48, max_seq_len=WINDOW, **extra)
        model = Transformer(config)
        model.init_weights(seed=0)
        dirs[family] = tmp_path_factory.mktemp(family) / "ckpt"
        save_checkpoint(dirs[family], config, model.state_dict(), tok)
    return dirs


# --- eval --input: not UTF-8, a directory ---

def test_eval_input_not_utf8_is_one_line(capsys, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait\n".encode("latin-1"))
    err = one_error_line(*run(capsys, "eval", "--model", "smollm2", "--input", str(latin1))[::2])
    assert f"--input {latin1} is not UTF-8 text" in err and "byte 3" in err and "iconv" in err


def test_eval_input_directory_names_a_file_to_pass(capsys, tmp_path):
    (tmp_path / "test.txt").write_text("hello\n")
    err = one_error_line(*run(capsys, "eval", "--model", "smollm2", "--input",
                              str(tmp_path))[::2])
    assert "is a directory" in err and str(tmp_path / "test.txt") in err
    err = one_error_line(*run(capsys, "eval", "--model", "smollm2", "--input",
                              str(tmp_path / "missing.txt"))[::2])
    assert "no such file" in err


def test_ngram_train_reads_through_the_same_helper(capsys, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait\n".encode("latin-1"))
    err = one_error_line(*run(capsys, "ngram", "train", "--input", str(latin1), "--order", "2",
                              "--out", str(tmp_path / "lm.arpa"))[::2])
    assert "is not UTF-8 text" in err


# --- --threads on every subcommand that has it ---

THREADED = {
    "generate": ["generate", "--model", "smollm2", "--prompt", "x"],
    "chat": ["chat", "--model", "smollm2"],
    "eval": ["eval", "--model", "smollm2", "--input", "x.txt"],
    "serve": ["serve", "--model", "smollm2"],
    "web": ["web", "--model", "smollm2"],
}


@pytest.mark.parametrize("command", list(THREADED))
@pytest.mark.parametrize("threads", ["-3", "0", "two"])
def test_threads_below_one_is_refused_by_every_subcommand(capsys, command, threads):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*THREADED[command], "--threads", threads])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --threads" in err and "Traceback" not in err
    assert ("give 1 or more" if threads != "two" else "not a whole number") in err


@pytest.mark.parametrize("command", list(THREADED))
def test_threads_of_one_or_more_parses(command):
    assert build_parser().parse_args([*THREADED[command], "--threads", "3"]).threads == 3


# --- convert: refuse a non-empty --out, write through a temporary directory ---

def test_convert_refuses_a_non_empty_directory_then_replaces_it_with_force(capsys, tiny,
                                                                           tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mode = out.stat().st_mode  # the umask's, which the new directory keeps too
    (out / "config.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("keep me")
    err = one_error_line(*run(capsys, "convert", "--model", str(tiny["decoder"]), "--to",
                              "lmforge", "--out", str(out))[::2])
    assert "is not empty" in err and "--force" in err
    assert (out / "config.json").read_text() == '{"mine": true}'
    code, stdout, _ = run(capsys, "convert", "--model", str(tiny["decoder"]), "--to",
                          "lmforge", "--out", str(out), "--force")
    assert code == 0 and "wrote lmforge model" in stdout
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer"}
    assert load_weights(out)[0] == load_weights(tiny["decoder"])[0]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left
    assert out.stat().st_mode == mode


def test_a_failed_convert_leaves_the_old_directory_whole(capsys, tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    # Hugging Face export writes Llama models only: it fails after the temporary directory
    err = one_error_line(*run(capsys, "convert", "--model", str(tiny["encoder_decoder"]),
                              "--to", "hf", "--out", str(out), "--force")[::2])
    assert "Llama models only" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_directory_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def write(tmp: Path) -> None:
        assert tmp.parent == tmp_path and (out / "old.txt").exists()
        (tmp / "new.txt").write_text("new")

    write_directory(out, write, force=True)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(LmforgeError, match="not a directory"):
        write_directory(tmp_path / "file", write, force=True)


# --- the context window: one rule for the CLI and the API ---

def test_fit_context_rule():
    given = GenerationConfig(max_tokens=100_000)
    with pytest.raises(LmforgeError) as exc:
        fit_context(2041, given, True, 2048)
    msg = str(exc.value)
    assert "2048" in msg and "2041" in msg and "100000" in msg and "at most 7" in msg
    assert fit_context(2041, GenerationConfig(), False, 2048).max_tokens == 7
    assert fit_context(10, GenerationConfig(), False, 2048).max_tokens == 256
    assert fit_context(2040, GenerationConfig(max_tokens=8), True, 2048).max_tokens == 8
    with pytest.raises(LmforgeError, match="no room for an answer"):
        fit_context(2048, GenerationConfig(), False, 2048)
    with pytest.raises(LmforgeError, match="min_tokens=100"):
        fit_context(2000, GenerationConfig(min_tokens=100, max_tokens=200), False, 2048)


def test_fit_context_of_an_encoder_decoder_counts_the_decoder_side():
    """The prompt is the encoder's source: the decoder holds 1 start token + max_tokens."""
    assert fit_context(5000, GenerationConfig(max_tokens=2047), True, 2048,
                       encoder_decoder=True).max_tokens == 2047
    assert fit_context(5000, GenerationConfig(), False, 64,
                       encoder_decoder=True).max_tokens == 63
    with pytest.raises(LmforgeError) as exc:
        fit_context(10, GenerationConfig(max_tokens=2048), True, 2048, encoder_decoder=True)
    assert "decoder window is 2048" in str(exc.value) and "at most 2047" in str(exc.value)


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_cli_generate_keeps_to_the_window(capsys, tiny, family):
    prompt = "abcdefghij"  # 10 characters, 10 tokens
    limit = WINDOW - (1 if family == "encoder_decoder" else len(prompt))
    base = ["generate", "--model", str(tiny[family]), "--prompt", prompt, "--temperature", "0"]
    err = one_error_line(*run(capsys, *base, "--max-tokens", str(limit + 1))[::2])
    assert str(WINDOW) in err and f"at most {limit}" in err and str(limit + 1) in err
    code, out, _ = run(capsys, *base, "--max-tokens", str(limit))
    assert code == 0 and len(out) - 1 == limit  # one character per token, no stop token
    code, out, _ = run(capsys, *base)  # the default 256 is lowered to the room left
    assert code == 0 and len(out) - 1 == limit


def test_cli_chat_refuses_a_max_tokens_over_the_window(capsys, cli_smollm2):
    err = one_error_line(*run(capsys, "chat", "--model", "smollm2", "--max-tokens",
                              "100000")[::2])
    assert "context window is 8192 tokens" in err and "asks for 100000" in err
    assert "system prompt (in the chat template)" in err


# --- the live server, and the same requests through the CLI ---

@pytest.fixture
def cli_smollm2(monkeypatch, smollm2):
    """SmolLM2 for CLI commands: the session's model, not loaded again by each command."""
    import lmforge.api

    load = lmforge.api.load
    monkeypatch.setattr(lmforge.api, "load", lambda spec, **kw: smollm2 if spec == "smollm2"
                        else load(spec, **kw))
    return smollm2


@pytest.fixture(scope="module")
def http(smollm2):
    info, server = start_server([smollm2], max_batch=2, max_queue=4, kv_cache_gb=0.2)
    with httpx.Client(base_url=info.url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=120) as client:
        yield client
    server.should_exit = True


def long_prompt(smollm2, n: int) -> str:
    """A text of exactly `n` SmolLM2 tokens."""
    text = " a" * n
    assert len(smollm2.tokenizer.encode(text, parse_special=True)) == n
    return text


def test_cli_and_api_reject_an_overlong_request_by_the_same_rule(capsys, cli_smollm2, http):
    """The issue's request: 2,041 prompt tokens and max_tokens 100,000. The server's window
    is its --ctx (at most 2,048 by default), the CLI's the model's (8,192 for SmolLM2)."""
    prompt = long_prompt(cli_smollm2, 2041)
    config = GenerationConfig(max_tokens=100_000)
    err = one_error_line(*run(capsys, "generate", "--model", "smollm2", "--prompt", prompt,
                              "--max-tokens", "100000")[::2])
    with pytest.raises(LmforgeError) as rule:
        fit_context(2041, config, True, 8192)
    assert err == f"error: {rule.value}\n" and "8192" in err and "2041" in err
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": prompt,
                                           "max_tokens": 100_000})
    body = r.json()["error"]
    assert r.status_code == 400 and body["code"] == "context_length_exceeded"
    with pytest.raises(LmforgeError) as rule:
        fit_context(2041, config, True, 2048)
    assert body["message"] == str(rule.value) and "100000" in body["message"]


@pytest.mark.parametrize("bias", [{"999999": 5}, {"-1": 100}])
def test_logit_bias_outside_the_vocabulary(capsys, cli_smollm2, http, bias):
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi",
                                           "max_tokens": 2, "logit_bias": bias})
    body = r.json()["error"]
    assert r.status_code == 400 and body["param"] == "logit_bias"
    token = next(iter(bias))
    assert f"token id {token}" in body["message"] and "49152" in body["message"]
    err = one_error_line(*run(capsys, "generate", "--model", "smollm2", "--prompt", "Hi",
                              "--max-tokens", "2", "--logit-bias", json.dumps(bias))[::2])
    assert f"token id {token}" in err and "49152" in err


def test_logit_bias_inside_the_vocabulary_still_works(smollm2, http):
    (zebra,) = smollm2.tokenizer.encode(" zebra")
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi",
                                           "max_tokens": 1, "temperature": 0,
                                           "logit_bias": {str(zebra): 100}})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == " zebra"


def test_a_huge_stop_list_gets_a_small_error(http):
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi",
                                           "max_tokens": 2, "stop": ["stop"] * 100_000})
    assert r.status_code == 400 and len(r.content) < 2048
    assert r.json()["error"]["param"] == "stop" and "100000 items" in r.text


def test_a_stop_string_over_the_cap_names_the_cap(http):
    stop = "x" * (MAX_STOP_CHARS + 1)
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi",
                                           "max_tokens": 2, "stop": stop})
    assert r.status_code == 400 and len(r.content) < 2048
    assert "1,000 characters" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi",
                                           "max_tokens": 1, "stop": stop[:-1]})
    assert r.status_code == 200


@pytest.mark.parametrize("body", [
    {"model": "smollm2", "prompt": "Hi", "k" * 1_000_000: 1},  # unknown field
    {"model": "m" * 1_000_000, "prompt": "Hi"},  # unknown model
    {"model": "smollm2", "prompt": "Hi", "logprobs": list(range(200_000))},  # unsupported
    {"model": "smollm2", "prompt": "Hi", "temperature": ["0.5"] * 200_000},  # wrong type
    {"model": "smollm2", "messages": [{"role": "r" * 1_000_000, "content": "x"}]},
], ids=["unknown field", "unknown model", "unsupported", "wrong type", "role"])
def test_errors_quote_only_an_excerpt(http, body):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = http.post(path, content=json.dumps(body))
    assert r.status_code in (400, 404) and len(r.content) < 2048, r.content[:300]


def test_excerpt_is_short_and_says_the_length():
    assert excerpt(["stop"] * 100_000).endswith("(100000 items)")
    assert len(excerpt("x" * 10**6)) < 120 and "1000000 characters" in excerpt("x" * 10**6)
    assert excerpt([1, 2]) == "[1, 2]"
