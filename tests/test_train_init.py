"""Training from a trained model (`train.init_from`) with part of it frozen
(`train.trainable`): frozen parameters stay as they were and never reach the optimizer,
checkpoints hold only the trained parameters plus the base's content hash, a changed base
is refused, and such a run resumes exactly. Also on the real SmolLM2."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pytest
import torch
from conftest import SHARED_DATA, TINY_TRAIN, run_workdir, tiny_run_toml

from lmforge.api import load
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import load_checkpoint
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.load import load_weights
from lmforge.interop.tensors import load_safetensors, save_safetensors
from lmforge.train.config import load_run_config
from lmforge.train.distributed import World
from lmforge.train.loop import train, train_step
from lmforge.train.setup import setup

TRAINABLE = ["layers.1.*", "norm.*"]


def tune_toml(init_from: str, trainable: list[str], model: str = "", **values) -> str:
    """A run that starts from `init_from` on the `data/` beside it (no [model] table unless
    `model` holds one)."""
    fields = {**TINY_TRAIN, "max_steps": 8, "eval_every": 4, "warmup_steps": 2, **values}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    return (f"{model}[data]\ndir = \"data\"\n[train]\ninit_from = {json.dumps(init_from)}\n"
            f"trainable = {json.dumps(trainable)}\n{lines}\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_char):
    d = run_workdir(tmp_path_factory.mktemp("init"), shakespeare_char, {
        "base.toml": tiny_run_toml(out_dir="base", threads=1),
        "tune.toml": tune_toml("base", TRAINABLE, out_dir="tune", threads=1)})
    train(load_run_config(d / "base.toml"), progress=False)
    return d


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_content_hash_follows_its_documented_formula():
    sd = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.tensor(1.5),
          "c": torch.ones(2, dtype=torch.bfloat16)}
    h = hashlib.sha256()
    for name in ("a", "b", "c"):
        t = sd[name]
        shape = ",".join(map(str, t.shape))
        h.update(f"{name}\0{str(t.dtype)[6:]}\0{shape}\0".encode())
        h.update(bytes(t.reshape(-1).view(torch.uint8).tolist()))
    assert content_hash(sd) == "sha256:" + h.hexdigest()
    assert content_hash(dict(reversed(sd.items()))) == content_hash(sd)
    assert content_hash({**sd, "b": sd["b"].t().contiguous().t()}) == content_hash(sd)
    for changed in ({**sd, "a": torch.tensor(1.25)}, {**sd, "b": sd["b"].view(3, 2)},
                    {**sd, "b": sd["b"].double()}, {"A": sd["a"], "b": sd["b"], "c": sd["c"]}):
        assert content_hash(changed) != content_hash(sd)


def test_frozen_parameters_stay_and_only_trainable_ones_reach_the_optimizer(workdir):
    tr = setup(load_run_config(workdir / "tune.toml", ["train.out_dir='steps'"]), False,
               World())
    _, base, _, _ = load_weights(workdir / "base")
    named = dict(tr.task.model.named_parameters())
    trainable = {n for n in named if n.startswith("layers.1.") or n.startswith("norm.")}
    assert set(tr.frozen.trainable) == trainable and 0 < len(trainable) < len(named)
    assert {n for n, p in named.items() if p.requires_grad} == trainable
    in_optimizer = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(named[n]) for n in trainable}
    decayed = {id(p) for g in tr.optimizer.param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert decayed == {id(named[n]) for n in trainable if named[n].dim() >= 2}
    for _ in range(3):
        assert math.isfinite(train_step(tr)["loss"])
    for name, p in named.items():
        assert torch.equal(p, base[name]) != (name in trainable), name


def test_checkpoints_hold_the_trained_parameters_and_the_base_hash(workdir, capsys):
    run_dir = train(load_run_config(workdir / "tune.toml"), progress=False)
    curve = losses(run_dir)
    assert curve[0] < math.log(65) - 0.4  # it starts from the trained base, not from chance
    _, base, _, _ = load_weights(workdir / "base")
    step = run_dir / "checkpoints" / "step-8"
    stored = load_safetensors([step / "model.safetensors"])
    assert set(stored) == {n for n in base if n.startswith(("layers.1.", "norm."))}
    record = json.loads((step / "base.json").read_text())
    assert record == {"init_from": str(workdir / "base"), "content_hash": content_hash(base),
                      "trainable": TRAINABLE}
    assert (run_dir / "best" / "base.json").is_file()
    lm = load(str(run_dir))  # `--model RUN_DIR`: the base with the trained tensors on top
    state = lm.model.state_dict()
    for name, tensor in base.items():
        assert torch.equal(state[name], stored.get(name, tensor)), name
    assert main(["generate", "--model", str(run_dir), "--prompt", "ROMEO:", "--max-tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_a_changed_base_is_refused(workdir):
    shutil.copytree(workdir / "base", workdir / "base-copy")
    (workdir / "moved.toml").write_text(
        tune_toml("base-copy", ["norm.*"], out_dir="moved", max_steps=4, threads=1))
    run = load_run_config(workdir / "moved.toml")
    run_dir = train(run, stop_after=2, progress=False)
    load_checkpoint(run_dir)  # loads while the base is unchanged
    weights = workdir / "base-copy" / "best" / "model.safetensors"
    tensors = load_safetensors([weights])
    tensors["norm.weight"] = tensors["norm.weight"] + 1e-3
    save_safetensors(weights, tensors)
    with pytest.raises(LmforgeError, match="the base changed since training"):
        load_checkpoint(run_dir)
    with pytest.raises(LmforgeError, match="the base changed; restore it"):
        train(run, resume=True, progress=False)


def test_frozen_base_run_resumes_exactly(workdir):
    whole_dir = train(load_run_config(workdir / "tune.toml", ["train.out_dir='whole'"]),
                      progress=False)
    paused = load_run_config(workdir / "tune.toml", ["train.out_dir='paused'"])
    train(paused, stop_after=4, progress=False)
    resumed_dir = train(paused, resume=True, progress=False)
    assert losses(resumed_dir) == losses(whole_dir) and len(losses(whole_dir)) == 8
    final = [load_safetensors([d / "checkpoints" / "step-8" / "model.safetensors"])
             for d in (whole_dir, resumed_dir)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    with pytest.raises(LmforgeError, match="train.trainable = \\['layers.1.\\*', 'norm.\\*'\\]"):
        train(load_run_config(workdir / "tune.toml", ["train.out_dir='paused'",
                                                      "train.trainable=['norm.*']"]),
              resume=True, progress=False)


def test_init_from_a_hugging_face_conversion_names_the_same_base(workdir):
    """The hash is over the weights as loaded, so the base's HF conversion has its hash."""
    assert main(["convert", "--model", str(workdir / "base"), "--to", "hf",
                 "--out", str(workdir / "base-hf")]) == 0
    (workdir / "hf.toml").write_text(tune_toml("base-hf", ["norm.*"], out_dir="tune-hf",
                                               max_steps=2, eval_every=2, warmup_steps=1))
    run_dir = train(load_run_config(workdir / "hf.toml"), progress=False)
    record = json.loads((run_dir / "best" / "base.json").read_text())
    assert record["content_hash"] == content_hash(load_weights(workdir / "base")[1])
    assert record["init_from"] == str(workdir / "base-hf")


def test_bad_init_settings_say_what_to_change(workdir, tmp_path):
    tune = workdir / "tune.toml"
    with pytest.raises(LmforgeError, match="init_from = .*no-such-model.*not a built-in name"):
        train(load_run_config(tune, ["train.init_from='no-such-model'"]), progress=False)
    with pytest.raises(LmforgeError,
                       match="'layers.9.\\*' matches no parameter.*named like .*layers\\.1\\."):
        train(load_run_config(tune, ["train.trainable=['norm.*', 'layers.9.*']"]),
              progress=False)
    (workdir / "conflict.toml").write_text(tune_toml(
        "base", TRAINABLE, "[model]\nd_model = 64\nn_layer = 2\nn_head = 8\n"))
    with pytest.raises(LmforgeError, match="d_model = 64 \\(init_from has 32\\), n_head = 8 "
                                           "\\(init_from has 4\\); remove the \\[model\\]"):
        train(load_run_config(workdir / "conflict.toml"), progress=False)
    (workdir / "agree.toml").write_text(tune_toml("base", TRAINABLE, "[model]\nd_model = 32\n",
                                                  out_dir="agree", max_steps=1, eval_every=1,
                                                  warmup_steps=0))
    train(load_run_config(workdir / "agree.toml"), progress=False)
    with pytest.raises(LmforgeError, match="set train.init_from"):
        load_run_config(tune, ["train.init_from=''"])
    with pytest.raises(LmforgeError, match="a list of parameter name patterns"):
        load_run_config(tune, ["train.trainable='norm.*'"])
    other = tmp_path / "other"  # data prepared with another tokenizer (other characters)
    from lmforge.data.prepare import prepare

    (tmp_path / "text.txt").write_text("abc abc cab bca\n" * 200)
    prepare("char", [str(tmp_path / "text.txt")], other, val_fraction=0.1, progress=False)
    with pytest.raises(LmforgeError, match="prepare the data with it: `lmforge prepare "
                                           "--tokenizer .*base"):
        train(load_run_config(tune, ["data.dir='" + str(other) + "'"]), progress=False)


@pytest.fixture(scope="module")
def smollm2_data(tmp_path_factory):
    """A few thousand characters of Tiny Shakespeare in SmolLM2's tokens."""
    from lmforge.data.prepare import prepare

    d = tmp_path_factory.mktemp("smollm2-data")
    text = (SHARED_DATA / "tinyshakespeare" / "train.txt").read_text(encoding="utf-8")[:6000]
    (d / "text.txt").write_text(text, encoding="utf-8")
    prepare("smollm2", [str(d / "text.txt")], d / "data", val_fraction=0.2, progress=False)
    return d / "data"


def test_smollm2_tunes_its_last_layer_and_final_norm_only(tmp_path, smollm2_data):
    (tmp_path / "data").symlink_to(smollm2_data, target_is_directory=True)
    (tmp_path / "tune.toml").write_text(tune_toml(
        "smollm2", ["layers.29.*", "norm.weight"], batch_size=2, block_size=32, max_steps=2,
        warmup_steps=1, lr=1e-3, out_dir="tune"))
    tr = setup(load_run_config(tmp_path / "tune.toml"), False, World())
    named = dict(tr.task.model.named_parameters())
    trainable = set(tr.frozen.trainable)
    assert trainable == {"norm.weight"} | {n for n in named if n.startswith("layers.29.")}
    frozen_before = content_hash({n: p for n, p in named.items() if n not in trainable})
    trained_before = {n: named[n].detach().clone() for n in trainable}
    assert {id(p) for g in tr.optimizer.param_groups for p in g["params"]} == \
        {id(named[n]) for n in trainable}
    for _ in range(2):
        done = train_step(tr)
        assert math.isfinite(done["loss"]) and done["loss"] < 8  # a trained model: ln V = 10.8
    assert content_hash({n: p for n, p in named.items() if n not in trainable}) == frozen_before
    assert all(not torch.equal(named[n], before) for n, before in trained_before.items())
