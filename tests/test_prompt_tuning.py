"""Prompt tuning (adapt/prompt_tuning.py) and P-Tuning v2 (adapt/ptuning2.py) on tiny random
models (2 layers, width 32, fp32) and minilm: generation with the KV cache equals passes
without it, alone, in a batch and through the server; the reparameterisation MLP folds away
exactly; only the adapter trains and the base stays bit-identical; adapters round-trip and a
mismatched base is refused; a short SST-2 run lowers the loss."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.adapt.adapter import CONFIG_FILE, AdapterBase, read_adapter, save_adapter
from lmforge.adapt.classifier import classify
from lmforge.adapt.finetune import finetune
from lmforge.adapt.labeled import read_labelled
from lmforge.adapt.prompt_tuning import (
    attach_prompt,
    init_prompt,
    prompt_prefix,
    remove_prompt,
)
from lmforge.adapt.ptuning2 import attach_ptuning, export, fold_prefix, remove_ptuning
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.generate.engine import Engine
from lmforge.interop.checkpoint import load_checkpoint, save_checkpoint
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.char import CharTokenizer

TOKENIZER = CharTokenizer.from_text(string.ascii_lowercase + " ")
V = TOKENIZER.vocab_size
DECODERS = {"rope": dict(n_kv_head=2),
            "learned": dict(norm="layernorm", mlp="gelu", position="learned", bias=True)}
ENCODER = dict(family="encoder", norm="layernorm", mlp="gelu", position="learned", bias=True,
               norm_position="post", type_vocab_size=2)
METHODS = ["prompt", "ptuning2"]
SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"


def tiny(seed: int = 0, **fields) -> Transformer:
    config = ModelConfig(**{**dict(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_ff=64,
                                   max_seq_len=64), **fields})
    model = Transformer(config)
    model.init_weights(std=0.2, seed=seed)
    return model.eval()


def adapt(model: Transformer, method: str, reparam: int = 0) -> Transformer:
    """`model` with a random adapter of `method` that changes its outputs."""
    if method == "prompt":
        attach_prompt(model, init_prompt(model, 5, "normal", seed=1) * 4)
        prompt_prefix(model)
    else:
        attach_ptuning(model, 4, reparam=reparam, std=0.5, seed=1)
    return model


def greedy_without_cache(model: Transformer, prompt: list[int], n: int
                         ) -> tuple[list[int], list[float]]:
    """n greedy tokens by a full pass per token, and the top-2 logit gap at each step."""
    ids, gaps = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            top = model(torch.tensor([ids]))[0, -1].topk(2)
            gaps.append(float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
    return ids[len(prompt):], gaps


def assert_same_until_near_tie(got: list[int], want: list[int], gaps: list[float]) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if gaps[i] < 1e-4:
            return
        assert a == b, f"token {i}: {got} != {want}"
    assert len(got) == len(want)


# --- generation through the cache = passes without it -----------------------------------

@pytest.mark.parametrize("position", DECODERS)
@pytest.mark.parametrize("method", METHODS)
def test_cached_generation_equals_passes_without_cache(method, position):
    model = adapt(tiny(**DECODERS[position]), method)
    base = tiny(**DECODERS[position])
    prompts = [TOKENIZER.encode("to be or not"), TOKENIZER.encode("abc")]
    engine = Engine(model, TOKENIZER)
    config = lmforge.GenerationConfig(max_tokens=10, temperature=0)
    batched = [c.token_ids for c in engine.generate(prompts, config)]
    for prompt, answer in zip(prompts, batched, strict=True):
        alone = engine.generate([prompt], config)[0].token_ids
        want, gaps = greedy_without_cache(model, prompt, 10)
        assert_same_until_near_tie(alone, want, gaps)
        assert_same_until_near_tie(answer, want, gaps)
    with torch.no_grad():  # the adapter changes the model
        assert (model(torch.tensor([prompts[0]])) - base(torch.tensor([prompts[0]]))
                ).abs().max() > 1e-2


@pytest.mark.parametrize("method", METHODS)
def test_a_cache_pass_without_the_prefix_written_reads_it_too(method):
    """Scoring and beam search prefill a plain cache: the same logits as without a cache."""
    from lmforge.generate.cache import KVCache
    from lmforge.generate.core import Batch, prefill

    model = adapt(tiny(), method)
    ids = TOKENIZER.encode("hello world")
    cache = KVCache(model.config, 2, 32)
    logits = prefill(model, cache, cache.allocate(), ids, all_logits=True)
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
    slot = cache.allocate()  # generation writes the prefix into the slot once
    logits = Batch(model, cache).prefill(slot, ids, all_logits=True)
    assert cache.prefix_len[slot] == model.prefix_kv.n_prefix == (5 if method == "prompt" else 4)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_encoder_rows_ignore_padding_and_keep_their_length(method):
    model = adapt(tiny(**ENCODER), method)
    a, b = torch.tensor([[3, 1, 4, 1, 5, 9]]), torch.tensor([[2, 6, 5, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        both = model.hidden(torch.cat([a, b]), attention_mask=mask)
        alone = model.hidden(b[:, :3])
        assert both.shape == (2, 6, 32)
        torch.testing.assert_close(both[1:, :3], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(both[:1], model.hidden(a), atol=1e-5, rtol=0)


def test_prompt_initialisations():
    model = tiny()
    table = model.embed.weight.detach()
    vocab = init_prompt(model, 6, "vocab", seed=3)
    assert all((table == row).all(-1).any() for row in vocab)  # rows of the table
    labels = init_prompt(model, 4, "labels", [[1, 2], [5]], seed=3)
    torch.testing.assert_close(labels[0], table[[1, 2]].mean(0))
    torch.testing.assert_close(labels[1], table[5])
    assert all((table == row).all(-1).any() for row in labels[2:])
    normal = init_prompt(model, 400, "normal", seed=3)
    assert abs(normal.std().item() / table.std().item() - 1) < 0.05
    with pytest.raises(LmforgeError, match="init=labels needs"):
        init_prompt(model, 4, "labels", None)
    with pytest.raises(LmforgeError, match="init='uniform'"):
        init_prompt(model, 4, "uniform")


# --- training: the reparameterisation, the frozen base ------------------------------------

def test_the_reparameterisation_folds_away_exactly():
    model = adapt(tiny(), "ptuning2", reparam=16)
    assert model.prefix_kv.mlp is not None
    ids = torch.tensor([TOKENIZER.encode("the mlp folds")])
    with torch.no_grad():
        unfolded = model(ids)
    _, tensors = export(model)
    assert sorted(tensors) == ["prefix.k", "prefix.v"]  # the saved adapter: K/V only
    fold_prefix(model)
    assert model.prefix_kv.mlp is None
    with torch.no_grad():
        torch.testing.assert_close(model(ids), unfolded, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.prefix_kv.k, tensors["prefix.k"])


@pytest.mark.parametrize("method,reparam", [("prompt", 0), ("ptuning2", 0), ("ptuning2", 8)])
def test_only_the_adapter_trains_and_the_base_stays_bit_identical(method, reparam):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapt(model, method, reparam).train()
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("soft_prompt.", "prefix_kv.")) for n in trained)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([TOKENIZER.encode("abcdefgh"), TOKENIZER.encode("hgfedcba")])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1),
                                                 ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(not torch.equal(p, trained[n]) for n, p in model.named_parameters()
               if n in trained)
    (remove_prompt if method == "prompt" else remove_ptuning)(model)
    assert model.state_dict().keys() == before.keys()
    with torch.no_grad():  # the plain model again
        torch.testing.assert_close(model.eval()(ids), tiny()(ids), atol=0, rtol=0)


# --- the adapter directory ----------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prompted")
    for name, seed in (("ckpt", 0), ("other", 7)):
        model = tiny(seed)
        save_checkpoint(root / name, model.config, model.state_dict(), TOKENIZER)
    _, sd, _, _ = load_weights(root / "ckpt")
    return {"ckpt": str(root / "ckpt"), "other": str(root / "other"),
            "base": AdapterBase(str(root / "ckpt"), content_hash(sd))}


@pytest.mark.parametrize("method", METHODS)
def test_adapter_round_trip_and_a_mismatched_base(method, base, tmp_path):
    model = adapt(tiny(), method, reparam=8 if method == "ptuning2" else 0)
    save_adapter(tmp_path / "a", model, method, base["base"])
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert config["lmforge"]["method"] == method
    assert set(read_adapter(tmp_path / "a").tensors) == (
        {"prompt.weight"} if method == "prompt" else {"prefix.k", "prefix.v"})
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "a")
    ids = torch.tensor([TOKENIZER.encode("round trip")])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), model(ids), atol=1e-5, rtol=0)
    with pytest.raises(LmforgeError, match="was trained on base"):
        lmforge.load(base["other"], adapter=tmp_path / "a")
    with pytest.raises(LmforgeError, match="already carries"):
        adapt(lm.model, method)
    plain, tuned = lmforge.load(base["ckpt"]).model.state_dict(), lm.model.state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in plain.items())  # the base as it was


@pytest.mark.parametrize("method", METHODS)
def test_served_answers_equal_generate_batched_and_streamed(method, base, tmp_path,
                                                            monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    save_adapter(tmp_path / "tuned", adapt(tiny(), method), method, base["base"])
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    assert main(["serve", "--model", base["ckpt"], "--adapter", str(tmp_path / "tuned"),
                 "--served-model-name", "tiny", "--kv-cache-gb", "0.01"]) == 0
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "tuned")
    prompts = ["abc", "to be or not to"]
    config = lmforge.GenerationConfig(max_tokens=8, temperature=0)
    expected = [c.text for c in lm.engine.generate([TOKENIZER.encode(p) for p in prompts],
                                                   config)]
    body = {"model": "tiny:tuned", "max_tokens": 8, "temperature": 0}
    with TestClient(apps[0]) as client:
        reply = client.post("/v1/completions", json={**body, "prompt": prompts}).json()
        assert [c["text"] for c in reply["choices"]] == expected  # one batch of two rows
        again = client.post("/v1/completions", json={**body, "prompt": prompts[1]}).json()
        assert again["choices"][0]["text"] == expected[1]  # a cached slot, reused
        with client.stream("POST", "/v1/completions",
                           json={**body, "prompt": prompts[0], "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in chunks) == expected[0]
        plain = client.post("/v1/completions", json={**body, "model": "tiny",
                                                     "prompt": prompts[0]}).json()
    base_text = lmforge.load(base["ckpt"]).engine.generate(
        [TOKENIZER.encode(prompts[0])], config)[0].text
    assert plain["choices"][0]["text"] == base_text


# --- fine-tuning SST-2 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sst2")
    train = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (d / "train.tsv").write_text("\n".join(train[:97]) + "\n", encoding="utf-8")
    (d / "dev.tsv").write_text("\n".join(dev[:33]) + "\n", encoding="utf-8")
    return d / "train.tsv", d / "dev.tsv"


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("prompt", {"init": "labels",
                                                      "label_words": "negative,positive"}),
                                          ("ptuning2", {"reparam": 32})])
def test_minilm_seqcls_lowers_the_loss(method, extra, sst2_files, tmp_path):
    settings = {"max_steps": 12, "eval_every": 12, "eval_batches": 1, "log_every": 1,
                "batch_size": 16, "warmup_steps": 2, "max_len": 32, "threads": 2,
                "eval_data": str(sst2_files[1]), "out_dir": str(tmp_path), **extra}
    result = finetune("minilm", method, "seqcls", sst2_files[0], settings, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in rows if "loss" in r]
    assert len(loss) == 12 and sum(loss[-4:]) < sum(loss[:4])
    assert result.trainable < 0.01 * result.total
    lm = lmforge.load("minilm", adapter=tmp_path / "adapter")  # the head travels with it
    data = read_labelled(sst2_files[1])
    labels = classify(lm, data.texts, batch_size=8)
    acc = sum(int(y) == g for y, g in zip(labels, data.labels, strict=True)) / len(labels)
    assert acc == result.eval_acc


@pytest.fixture(scope="module")
def tiny_wordpiece(tmp_path_factory) -> str:
    """A 2-layer width-32 encoder with minilm's WordPiece vocabulary, as a checkpoint."""
    tokenizer = load_weights("minilm")[2]
    model = tiny(**{**ENCODER, "vocab_size": tokenizer.vocab_size})
    path = tmp_path_factory.mktemp("wp") / "model"
    save_checkpoint(path, model.config, model.state_dict(), tokenizer)
    return str(path)


@pytest.mark.parametrize("method,extra", [("prompt", {"init": "labels", "n_virtual": 4}),
                                          ("ptuning2", {"reparam": 8, "n_prefix": 4})])
def test_finetune_saves_one_adapter_and_resumes_exactly(method, extra, tiny_wordpiece,
                                                        sst2_files, tmp_path):
    settings = {"max_steps": 6, "eval_every": 3, "eval_batches": 1, "log_every": 1,
                "batch_size": 8, "warmup_steps": 1, "max_len": 24,
                "eval_data": str(sst2_files[1]), **extra}

    def run(out: Path, **kw):
        return finetune(tiny_wordpiece, method, "seqcls", sst2_files[0],
                        {**settings, "out_dir": str(out)}, progress=False, **kw)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=3)
    resumed = run(tmp_path / "b", resume=True)
    metrics = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in "ab"]
    loss = [[json.loads(x)["loss"] for x in m if '"loss"' in x] for m in metrics]
    assert loss[0] == loss[1] and len(loss[0]) == 6  # bit for bit
    assert resumed.eval_acc == straight.eval_acc
    stored = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-6", with_base=False)[1]
    assert set(stored) == ({"soft_prompt.weight"} if method == "prompt" else
                           {"prefix_kv.embed", "prefix_kv.mlp.0.weight", "prefix_kv.mlp.0.bias",
                            "prefix_kv.mlp.2.weight", "prefix_kv.mlp.2.bias"})
    adapter = read_adapter(tmp_path / "a" / "adapter")
    assert adapter.method == method and adapter.config["classifier"]["labels"] == ["0", "1"]
    lm = lmforge.load(tiny_wordpiece, adapter=tmp_path / "a" / "adapter")
    data = read_labelled(sst2_files[1])
    labels = classify(lm, data.texts, batch_size=5)
    acc = sum(int(y) == g for y, g in zip(labels, data.labels, strict=True)) / len(labels)
    assert acc == straight.eval_acc  # the adapter and its head reproduce the run


@pytest.mark.parametrize("method", METHODS)
def test_generate_and_scoring_read_the_adapter(method, base, tmp_path, capsys):
    """`lmforge generate --adapter` and the scoring layer under `eval` (a pass without a
    cache, and continuations scored from a plain KV cache) use the adapter."""
    from lmforge.score import loglikelihood, token_logprobs

    save_adapter(tmp_path / "a", adapt(tiny(), method), method, base["base"])
    argv = ["generate", "--model", base["ckpt"], "--prompt", "abc", "--max-tokens", "6",
            "--temperature", "0"]
    assert main(argv + ["--adapter", str(tmp_path / "a")]) == 0
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "a")
    config = lmforge.GenerationConfig(max_tokens=6, temperature=0)
    assert capsys.readouterr().out == lm.engine.generate([TOKENIZER.encode("abc")],
                                                         config)[0].text + "\n"
    context, cont = TOKENIZER.encode("to be or"), TOKENIZER.encode(" not to be")
    whole = token_logprobs(lm.model, context + cont, prefix=len(context))
    cached = loglikelihood(lm.model, context, [cont])[0]
    assert cached.logprob == pytest.approx(whole.total(), abs=1e-4)
    plain = token_logprobs(lmforge.load(base["ckpt"]).model, context + cont,
                           prefix=len(context))
    assert abs(plain.total() - whole.total()) > 1e-2
