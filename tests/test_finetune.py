"""Fine-tuning and probing (#19): pooling on hand cases, the feature cache, probes on real
features, full fine-tuning of a tiny model (loss, exact resume, frozen embeddings, layer-wise
lr decay), a probe leaving its base unchanged, the decoder path, and the clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.adapt.classifier import classify
from lmforge.adapt.finetune import finetune, layer_decay_optimizer
from lmforge.adapt.heads import SeqCls, hidden_states, last_pool, pool
from lmforge.adapt.labeled import Encoded, encode, read_labelled
from lmforge.adapt.probe import cached_features, probe_task
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.objective import ObjectiveModel

SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"
ENCODER = dict(family="encoder", norm="layernorm", norm_eps=1e-12, mlp="gelu",
               position="learned", bias=True, norm_position="post", type_vocab_size=2)
TINY = dict(vocab_size=30522, d_model=32, n_layer=2, n_head=4, d_ff=64, max_seq_len=64)
FAST = {"max_steps": 16, "eval_every": 8, "eval_batches": 2, "log_every": 1, "batch_size": 8,
        "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "max_len": 32}


@pytest.fixture(scope="module")
def wordpiece():
    return load_weights("minilm")[2]


def tiny_model(directory: Path, tokenizer, **fields) -> str:
    """A 2-layer width-32 model with minilm's WordPiece vocabulary, saved as a checkpoint."""
    config = ModelConfig(**{**TINY, **ENCODER, **fields})
    model = Transformer(config)
    model.init_weights(std=0.02, seed=0)
    save_checkpoint(directory, config, model.state_dict(), tokenizer)
    return str(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, wordpiece) -> str:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model", wordpiece)


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory) -> tuple[Path, Path]:
    """64 SST-2 training rows and 32 dev rows, as TSV files."""
    d = tmp_path_factory.mktemp("sst2")
    train = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (d / "train.tsv").write_text("\n".join(train[:65]) + "\n", encoding="utf-8")
    (d / "dev.tsv").write_text("\n".join(dev[:33]) + "\n", encoding="utf-8")
    return d / "train.tsv", d / "dev.tsv"


def run(model: str, method: str, files, out: Path, **settings):
    return finetune(model, method, "seqcls", files[0],
                    {**FAST, "eval_data": str(files[1]), "out_dir": str(out), **settings},
                    progress=False)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


# --- pooling and per-layer states -------------------------------------------------------

def test_pooling_on_hand_cases():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                      [[5.0, 6.0], [-7.0, 8.0], [9.0, 9.0]]])  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool(h, mask, "mean"), torch.tensor([[2.0, 3.0], [7 / 3, 23 / 3]]))
    assert pool(h, mask, "cls").tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert last_pool(h, mask).tolist() == [[3.0, 4.0], [9.0, 9.0]]  # last real token


def test_hidden_states_of_every_layer(tiny):
    config, state_dict, _, _ = load_weights(tiny)
    model = Transformer(config)
    model.load_state_dict(state_dict)
    ids, mask = torch.tensor([[101, 7592, 2088, 102]]), torch.ones(1, 4, dtype=torch.long)
    states = hidden_states(model.eval(), ids, mask, [0, 1, 2])
    x = model.embed_norm(model.embed(ids) + model.type_embed.weight[0]
                         + model.abs_position(torch.arange(4)[None]))
    torch.testing.assert_close(states[0], x)
    torch.testing.assert_close(states[2], model.hidden(ids, attention_mask=mask))
    assert not model.layers[0]._forward_pre_hooks and not model.layers[0]._forward_hooks


# --- the feature cache and probes -------------------------------------------------------

def test_feature_cache_is_hit_the_second_time(tiny, wordpiece, sst2_files, tmp_path):
    config, state_dict, _, _ = load_weights(tiny)
    model = Transformer(config)
    model.load_state_dict(state_dict)
    data = encode(wordpiece, config, read_labelled(sst2_files[1]), 32)
    calls = []
    model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    args = dict(task="t", split="dev", layers=[0, 2], pooling="mean", cache_dir=tmp_path)
    first = cached_features(model.eval(), "sha256:x", data, **args)
    n = len(calls)
    second = cached_features(model, "sha256:x", data, **args)
    assert n > 0 and len(calls) == n  # no forward pass the second time
    assert all(torch.equal(first[k], second[k]) for k in (0, 2))
    other = Encoded(data.rows, data.types, 1 - data.labels)  # other rows: another entry
    cached_features(model, "sha256:x", other, **args)
    assert len(calls) > n and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_probe_on_real_features_beats_chance_and_draws_the_layers(tmp_path):
    train = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(train[:201]) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(dev[:101]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = probe_task("minilm", str(tmp_path / "train.tsv"), "0,6", out,
                        eval_data=str(tmp_path / "dev.tsv"), cache_dir=tmp_path / "cache",
                        max_len=64, progress=False)
    by_layer = {r.layer: r.eval_acc for r in result.results}
    print(f"minilm probe, 200 SST-2 train rows, 100 dev rows: {by_layer}")
    assert by_layer[6] > max(result.chance, 0.5) + 0.1  # measured 0.72 (layer 0: 0.70)
    assert (out / "probe_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["layer"] for r in json.loads((out / "probe.json").read_text())["layers"]] == [0, 6]


# --- full fine-tuning and the probe method on a tiny model ------------------------------

def test_full_fine_tuning_lowers_the_loss_and_resumes_exactly(tiny, sst2_files, tmp_path):
    settings = dict(dropout=0.1, layer_decay=0.8, head_hidden=16)
    straight = run(tiny, "full", sst2_files, tmp_path / "a", **settings)
    a = losses(straight.run_dir)
    assert len(a) == 16 and sum(a[-4:]) < sum(a[:4])
    finetune(tiny, "full", "seqcls", sst2_files[0],
             {**FAST, **settings, "eval_data": str(sst2_files[1]), "out_dir": str(tmp_path / "b")},
             stop_after=8, progress=False)
    resumed = finetune(tiny, "full", "seqcls", sst2_files[0],
                       {**FAST, **settings, "eval_data": str(sst2_files[1]),
                        "out_dir": str(tmp_path / "b")}, resume=True, progress=False)
    assert losses(resumed.run_dir) == a  # bit for bit: batches, dropout, optimizer, lr
    assert resumed.eval_acc == straight.eval_acc and resumed.eval_n == 32
    lm = lmforge.load(str(straight.run_dir / "model"), adapter=straight.run_dir / "adapter")
    assert lm.model.classifier.settings["pooling"] == "mean"
    texts = read_labelled(sst2_files[1]).texts
    labels = classify(lm, texts, batch_size=5)  # the adapter reproduces the run's accuracy
    gold = read_labelled(sst2_files[1]).labels
    assert sum(int(y) == g for y, g in zip(labels, gold, strict=True)) / 32 == resumed.eval_acc


def test_frozen_embeddings_stay_bit_identical(tiny, sst2_files, tmp_path):
    r = run(tiny, "full", sst2_files, tmp_path / "run", freeze_embeddings=True, max_steps=4)
    before, after = load_weights(tiny)[1], load_weights(r.run_dir / "model")[1]
    for name in ("embed.weight", "type_embed.weight", "abs_position.table.weight",
                 "embed_norm.weight", "embed_norm.bias"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["layers.0.attn.qkv.weight"], after["layers.0.attn.qkv.weight"])


def test_layer_decay_scales_the_learning_rate_by_depth(tiny):
    config, state_dict, _, _ = load_weights(tiny)
    model = Transformer(config)
    model.load_state_dict(state_dict)
    task = ObjectiveModel(model, SeqCls(2, "mean"))
    opt = layer_decay_optimizer(torch.optim.AdamW(task.parameters()), task, 0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale[id(model.embed.weight)] == 0.5 ** 3  # n + 1 = 3 levels below the head
    assert scale[id(model.layers[0].attn.qkv.weight)] == 0.25
    assert scale[id(model.layers[1].ffn.up.weight)] == 0.5
    assert scale[id(task.head.out.weight)] == 1.0
    assert len(scale) == len(list(task.parameters()))


def test_probe_method_leaves_the_base_bit_identical(tiny, sst2_files, tmp_path):
    r = run(tiny, "probe", sst2_files, tmp_path / "run", cache_dir=str(tmp_path / "cache"))
    assert r.trainable == 32 * 2 + 2  # the linear head only
    step = r.run_dir / "checkpoints" / "step-16"
    assert json.loads((step / "base.json").read_text())["trainable"] == []
    base = load_weights(tiny)[1]
    rebuilt = load_weights(r.run_dir)[1]  # the run's checkpoint on top of its base
    assert rebuilt.keys() == base.keys()
    assert all(torch.equal(base[k], rebuilt[k]) for k in base)
    lm = lmforge.load(tiny, adapter=r.run_dir / "adapter")
    assert lm.model.classifier.settings["layer"] == -1
    assert content_hash({k: v for k, v in lm.model.state_dict().items()
                         if not k.startswith("classifier.")}) == content_hash(base)
    other = tiny_model(tmp_path / "other", lm.tokenizer, n_layer=1)
    with pytest.raises(LmforgeError, match="was trained on base"):
        lmforge.load(other, adapter=r.run_dir / "adapter")


def test_decoder_path_with_last_token_pooling(tmp_path, wordpiece, sst2_files):
    decoder = tiny_model(tmp_path / "decoder", wordpiece, family="decoder",
                         norm_position="pre", type_vocab_size=0)
    r = run(decoder, "full", sst2_files, tmp_path / "run", max_steps=4)
    lm = lmforge.load(str(r.run_dir / "model"), adapter=r.run_dir / "adapter")
    assert lm.model.classifier.settings["pooling"] == "last"
    assert set(classify(lm, ["a fine film", "a dull one"])) <= {"0", "1"}
    with pytest.raises(LmforgeError, match="causal model"):
        run(decoder, "full", sst2_files, tmp_path / "cls", pooling="cls")


# --- errors -------------------------------------------------------------------------------

def test_clear_errors(tiny, sst2_files, tmp_path, capsys):
    base = ["finetune", "--model", tiny, "--task", "seqcls", "--data", str(sst2_files[0]),
            "--out", str(tmp_path / "o")]
    assert main([*base[:4], "sft", *base[5:], "--method", "probe"]) == 2
    assert "--task sft takes --method full or lora" in capsys.readouterr().err
    assert main([*base, "--method", "bogus"]) == 2
    assert "use one of full, probe" in capsys.readouterr().err
    assert main([*base, "--method", "full", "--set", "label_column=sentiment"]) == 2
    assert "no column 'sentiment'" in capsys.readouterr().err
    assert main([*base, "--method", "full", "--set", "lrr=1"]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert main([*base, "--method", "full", "--set", "max_len=long"]) == 2
    assert "expected int" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_probe_with_last_token_pooling(tmp_path):
    """The decoder path on the real model: last-token features of SmolLM2's middle and last
    layers, probed on 300 SST-2 training rows, scored on 200 dev rows."""
    train = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(train[:301]) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(dev[:201]) + "\n", encoding="utf-8")
    result = probe_task("smollm2", str(tmp_path / "train.tsv"), "15,30", tmp_path / "out",
                        eval_data=str(tmp_path / "dev.tsv"), cache_dir=tmp_path / "cache",
                        max_len=64, progress=False)
    by_layer = {r.layer: r.eval_acc for r in result.results}
    print(f"smollm2 last-token probe, 300 train / 200 dev: {by_layer}")
    assert max(by_layer.values()) > max(result.chance, 0.5) + 0.1
