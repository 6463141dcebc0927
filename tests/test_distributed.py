"""Training under `torchrun` with 2 CPU processes (gloo) on Tiny Shakespeare (characters):
DDP and FSDP for a dense decoder, BART denoising and mixture-of-experts decoders.

- Dense and seq2seq runs equal the single-process run of the same global batch within
  1e-5, also across a pause (`--stop-after`) and `--resume` in fresh processes.
- MoE runs cannot equal one process (router noise, Switch capacity and the balance loss
  are per rank), so they check what DDP promises: after every step both ranks hold the
  same parameters (every expert, used or not, is in the graph), and FSDP, which computes
  the same per-rank forward, gives DDP's losses.

Run as a script (by `torchrun`), this file is the worker: `python tests/test_distributed.py
DUMP_DIR train …` runs `lmforge train …` and then writes each rank's parameters to
DUMP_DIR/rank-R.pt.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_workdir, tiny_run_toml

RUNS = {  # name: ([model] lines, [train] lines)
    "decoder": ("", ""),
    "bert": ('family = "encoder"\ntype_vocab_size = 2', "nsp = true"),
    "bart": ('family = "encoder_decoder"\nposition = "relative"', 'objective = "denoising"'),
    "topk": ('moe_experts = 16\nmoe_routing = "topk"\nmoe_k = 2\nmoe_d_ff = 16', ""),
    # capacity ⌈1.0 · 32 / 16⌉ = 2 of each rank's 32 tokens: uneven routing drops some
    "switch": ('moe_experts = 16\nmoe_routing = "switch"\nmoe_capacity_factor = 1.0\n'
               'moe_d_ff = 16\nmoe_layers = "every_other"', ""),
}
# 16 experts and 32 tokens per rank, so that some expert gets no token on a rank: DDP then
# still needs its (zero) gradient
MOE_SETS = ("--set", "train.batch_size=2")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_char):
    return run_workdir(tmp_path_factory.mktemp("distributed"), shakespeare_char, {
        f"{name}.toml": tiny_run_toml(model, extra, max_steps=6, warmup_steps=2, eval_every=3,
                                      threads=1)
        for name, (model, extra) in RUNS.items()})


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in rows(run_dir) if "loss" in r]


def torchrun(workdir: Path, name: str, out: str, *extra: str, dump: Path | None = None,
             fsdp: bool = False) -> Path:
    """`lmforge train --config NAME.toml` on 2 processes; the run directory. With `dump`,
    through this file's worker, which writes each rank's parameters there."""
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    sets = [f"train.out_dir='{out}'", f"train.fsdp={str(fsdp).lower()}"]
    entry = [__file__, str(dump)] if dump else ["-m", "lmforge.cli"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", port, *entry, "train",
         "--config", str(workdir / f"{name}.toml"), *[a for s in sets for a in ("--set", s)],
         *extra], capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / out


def paused_and_resumed(workdir: Path, name: str, out: str, *extra: str, **kw) -> Path:
    torchrun(workdir, name, out, *extra, "--stop-after", "3", **kw)
    assert [r["step"] for r in rows(workdir / out) if "loss" in r] == [1, 2, 3]
    return torchrun(workdir, name, out, *extra, "--resume", **kw)


@pytest.mark.parametrize(("name", "fsdp"), [
    ("decoder", False), ("bart", False), ("bart", True),
    pytest.param("bert", True, marks=pytest.mark.slow)])
def test_two_processes_match_one_process_across_a_resume(workdir, name, fsdp):
    """The global batch split over 2 ranks (DDP, or FSDP's sharded parameters) gives the
    single-process losses within 1e-5, paused after step 3 and resumed in new processes."""
    from lmforge.train.config import load_run_config
    from lmforge.train.loop import train

    single = losses(train(load_run_config(workdir / f"{name}.toml",
                                          [f"train.out_dir='{name}-single'"]), progress=False))
    run_dir = paused_and_resumed(workdir, name, f"{name}-{'fsdp' if fsdp else 'ddp'}",
                                 fsdp=fsdp)
    split = losses(run_dir)
    assert len(split) == len(single) == 6
    assert max(abs(a - b) for a, b in zip(split, single, strict=True)) <= 1e-5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert (run_dir / "best" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def moe_ddp(workdir) -> Callable[[str], Path]:
    """A MoE run under DDP, paused and resumed, with both ranks' final parameters (each run
    once, when a test first asks for it)."""
    runs: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in runs:
            runs[name] = paused_and_resumed(workdir, name, f"{name}-ddp", *MOE_SETS,
                                            dump=workdir / f"{name}-dump")
        return runs[name]

    return run


@pytest.mark.parametrize("name", ["topk", "switch"])
def test_moe_under_ddp_trains_resumes_and_keeps_the_ranks_identical(workdir, moe_ddp, name):
    run_dir = moe_ddp(name)
    ranks = [torch.load(workdir / f"{name}-dump" / f"rank-{r}.pt", weights_only=True)
             for r in (0, 1)]
    experts = [k for k in ranks[0] if ".experts." in k]
    assert len(experts) >= 16 * 2  # every expert's projections
    assert ranks[0].keys() == ranks[1].keys()
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    train_rows = [r for r in rows(run_dir) if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    curve = [r["loss"] for r in train_rows]
    assert all(math.isfinite(v) for v in curve) and curve[-1] < curve[0]
    assert all({"moe_balance_loss", "moe_z_loss", "moe_dropped", "moe_utilisation"} <= set(r)
               for r in train_rows)
    utilisation = train_rows[-1]["moe_utilisation"]
    assert set(utilisation) == ({"0", "1"} if name == "topk" else {"1"})
    assert all(len(u) == 16 and sum(u) == pytest.approx(1, abs=1e-4)
               for u in utilisation.values())
    assert any(0 in u for r in train_rows for u in r["moe_utilisation"].values())
    dropped = [r["moe_dropped"] for r in train_rows]
    assert (min(dropped) > 0) if name == "switch" else (max(dropped) == 0)
    assert (run_dir / "experts.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["topk", "switch"])
def test_moe_under_fsdp_gives_the_ddp_losses(workdir, moe_ddp, name):
    """FSDP shards the experts but computes the same per-rank forward as DDP."""
    run_dir = torchrun(workdir, name, f"{name}-fsdp", *MOE_SETS, fsdp=True)
    sharded, ddp = rows(run_dir), rows(moe_ddp(name))
    assert len(losses(run_dir)) == 6
    assert max(abs(a - b) for a, b in zip(losses(run_dir), losses(moe_ddp(name)),
                                          strict=True)) <= 1e-5
    assert [r["moe_dropped"] for r in sharded if "loss" in r] == \
        [r["moe_dropped"] for r in ddp if "loss" in r]
    assert (run_dir / "best" / "model.safetensors").is_file()


def worker(dump: Path, argv: list[str]) -> None:
    """`lmforge train` (argv) under torchrun, then this rank's parameters to `dump`."""
    from lmforge.cli import main
    from lmforge.train import distributed

    wrapped: list[torch.nn.Module] = []
    wrap = distributed.wrap

    def capture(model: torch.nn.Module, world, fsdp: bool = False) -> torch.nn.Module:
        wrapped.append(model)  # DDP trains this module's own parameters in place
        return wrap(model, world, fsdp)

    distributed.wrap = capture
    if main(argv) != 0:
        raise SystemExit(1)
    dump.mkdir(exist_ok=True)
    torch.save(wrapped[0].state_dict(), dump / f"rank-{os.environ['RANK']}.pt")


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2:])
