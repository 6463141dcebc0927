"""The trainer on real data: it learns, writes its run directory, and resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_workdir, tiny_run_toml

from lmforge import hardware
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.train.config import load_run_config
from lmforge.train.loop import lr_at, train

CONFIG = tiny_run_toml(out_dir="run")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_char):
    return run_workdir(tmp_path_factory.mktemp("train"), shakespeare_char, {"run.toml": CONFIG})


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_learns_and_writes_the_run_directory(workdir):
    run_dir = train(load_run_config(workdir / "run.toml"), progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals[-1] < math.log(65) - 0.5  # well below the uniform guess over 65 characters
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert (run_dir / "best" / "model.safetensors").is_file()
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-16", "step-24"]
    assert all("layer_grad_norms" in r for r in rows if "loss" in r)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_resume_continues_exactly(workdir, dtype):
    """fp16 (loss-scaled; on a CPU only to check the bookkeeping) restores its scale too."""
    sets = [f"train.dtype='{dtype}'"]
    whole_dir = train(load_run_config(workdir / "run.toml", [*sets, f"train.out_dir='a{dtype}'"]),
                      progress=False)
    whole = losses(whole_dir)
    paused = load_run_config(workdir / "run.toml", [*sets, f"train.out_dir='b{dtype}'"])
    train(paused, stop_after=10, progress=False)
    resumed = losses(train(paused, resume=True, progress=False))
    assert resumed == whole and len(whole) == 24
    rows = [json.loads(line) for line in (whole_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(("loss_scale" in r) == (dtype == "fp16") for r in rows if "loss" in r)


def test_fp16_skips_a_step_whose_gradients_overflow():
    """Dynamic loss scaling: an overflowing step leaves the weights as they were and halves
    the scale; the next good step is taken."""
    from lmforge.train.precision import Precision

    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    precision = Precision("fp16", torch.device("cpu"))
    precision.load_state_dict({**precision.state_dict(), "scale": 3e38})
    before = layer.weight.detach().clone()
    for scale in (3e38, 1.5e38):
        assert precision.metrics()["loss_scale"] == pytest.approx(scale)
        with precision.autocast():
            loss = layer(torch.full((2, 4), 100.0)).float().sum()
        precision.backward(loss)
        precision.unscale(optimizer)
        assert not precision.step(optimizer)
        optimizer.zero_grad()
        assert torch.equal(layer.weight, before)
    precision.load_state_dict({**precision.state_dict(), "scale": 1024.0})
    with precision.autocast():
        precision.backward(layer(torch.ones(2, 4)).float().sum())
    precision.unscale(optimizer)
    assert precision.step(optimizer) and not torch.equal(layer.weight, before)


def test_trained_run_generates_through_the_cli(workdir, capsys):
    code = main(["generate", "--model", str(workdir / "run"), "--prompt", "ROMEO:",
                 "--max-tokens", "20", "--temperature", "0.8", "--seed", "1"])
    assert code == 0 and len(capsys.readouterr().out) > 10


def test_schedule_and_bad_configs(workdir):
    t = load_run_config(workdir / "run.toml").train
    assert lr_at(0, t) == pytest.approx(t.lr / 4) and lr_at(3, t) == pytest.approx(t.lr)
    assert lr_at(t.max_steps, t) == pytest.approx(t.min_lr)
    with pytest.raises(LmforgeError, match="optimizr"):
        load_run_config(workdir / "run.toml", ["train.optimizr=1"])
    with pytest.raises(LmforgeError, match="dtype"):
        load_run_config(workdir / "run.toml", ["train.dtype='fp8'"])
    with pytest.raises(LmforgeError, match="device"):
        load_run_config(workdir / "run.toml", ["train.device='tpu'"])
    with pytest.raises(LmforgeError, match="train.threads=-3 is invalid"):
        load_run_config(workdir / "run.toml", ["train.threads=-3"])
    if not torch.cuda.is_available():
        with pytest.raises(LmforgeError, match="no CUDA GPU is visible"):
            train(load_run_config(workdir / "run.toml", ["train.device='cuda'"]),
                  progress=False)
    with pytest.raises(LmforgeError, match="no checkpoints"):
        train(load_run_config(workdir / "run.toml", ["train.out_dir='fresh'"]), resume=True,
              progress=False)



@pytest.mark.parametrize(("flags", "dtype"), [({"avx2", "fma"}, "fp32"),
                                              ({"avx512f", "avx512_bf16"}, "bf16"),
                                              ({"amx_tile", "amx_bf16"}, "bf16")])
def test_auto_dtype_is_bf16_only_where_the_cpu_has_it(monkeypatch, workdir, flags, dtype):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert hardware.auto_dtype() == dtype
    run = load_run_config(workdir / "run.toml", ["train.dtype='auto'", "train.max_steps=2",
                                                 "train.warmup_steps=1", "train.out_dir='auto'"])
    run_dir = train(run, progress=False)
    assert json.loads((run_dir / "run_config.json").read_text())["train"]["dtype"] == dtype
