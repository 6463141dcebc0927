"""Mixture of experts against dense decoders of equal active parameters, on Penn Treebank.

    python benchmarks/moe.py --threads 2 [--steps 150] [--seeds 0 1 2] [--eval-every N]
        [--width 256] [--layers 4] [--ffn 1024] [--context 256] [--batch 8] [--lr 2e-3]
        [--router-noise 1.0] [--capacity-factor 1.25] [--variants dense topk switch dense-4F]
        [--full-vocab] [--bf16] [--device cuda] [--out NAME] [--resume]

Data: ../shared/data/ptb tokenised with SmolLM2's tokenizer (prepared once into
data/ptb-smollm2). PTB uses only 9,514 of the tokenizer's 49,152 ids (every validation id
occurs in training), so by default the ids are renumbered onto those 9,514: the same token
stream with a 5× smaller embedding and head, which otherwise dominate the time at this width
(--full-vocab keeps all 49,152). Every model (defaults): 4 layers, width 256, one head per 64
dimensions, SwiGLU, context 256, tied embeddings; batch 8 × 256 tokens, AdamW (lr 2e-3, 10%
warmup, cosine to a tenth of it), fp32 (--bf16: autocast; slower than fp32 on CPUs without
native bf16). --device cuda trains on a GPU; step times are then measured after a
synchronize and peak memory is CUDA's. Variants, with F = --ffn:

    dense     feed-forward width F
    topk      8 experts of width F/2, 2 per token (noisy top-k)   — active width F
    switch    8 experts of width F, 1 per token (capacity --capacity-factor) — active width F
    dense-4F  feed-forward width 4F (the upper reference)

--router-noise scales the learned router noise of topk and switch (0: none);
--capacity-factor sets switch's capacity in training. --variants trains a subset (dense is
always among them: the ratios are to it). For each seed the models train on the same
batches, one step each in turn (the order alternates every step), so their tokens/s are
measured side by side under the same load.
Validation loss: mean cross-entropy over the first --val-windows non-overlapping windows of
the PTB validation split, at the end and every --eval-every steps. Peak memory: the rise of
the peak resident set size over one training step, in a fresh process per variant.
Writes benchmarks/results/NAME.json after every seed (--resume keeps the seeds a run with
the same settings finished), NAME_utilisation.png (expert utilisation over training, first
seed) and, with --eval-every, NAME_val.png (validation loss against training tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmforge.data.prepare import load_tokens, prepare
from lmforge.hardware import cpu_name
from lmforge.io import atomic_write, atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.model.moe import moe_aux_loss, moe_stats, param_counts
from lmforge.model.transformer import Transformer
from lmforge.objectives.causal_lm import causal_lm_loss

ROOT = Path(__file__).resolve().parents[1]
PTB = ROOT / ".." / "shared" / "data" / "ptb"
DATA = ROOT / "data" / "ptb-smollm2"
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("dense", "topk", "switch", "dense-4F")
SETUP = {"width": 256, "layers": 4, "ffn": 1024, "context": 256, "batch": 8, "lr": 2e-3,
         "router_noise": 1.0, "capacity_factor": 1.25}
# SETUP holds the defaults; main() fills in the command line's values
CHOSEN = list(VARIANTS)  # main() narrows it to --variants
AUTOCAST = {"enabled": False}
DEVICE = {"type": "cpu"}


def shape() -> dict:
    return dict(d_model=SETUP["width"], n_layer=SETUP["layers"],
                n_head=max(1, SETUP["width"] // 64), d_ff=SETUP["ffn"],
                max_seq_len=SETUP["context"], mlp="swiglu")


def variant(name: str) -> dict:
    """The config fields by which a variant departs from the dense shape (F = ffn width)."""
    f, noise, capacity = SETUP["ffn"], SETUP["router_noise"], SETUP["capacity_factor"]
    return {"dense": {},
            "topk": dict(moe_experts=8, moe_routing="topk", moe_k=2, moe_d_ff=f // 2,
                         moe_noise=noise),
            "switch": dict(moe_experts=8, moe_routing="switch", moe_d_ff=f,
                           moe_capacity_factor=capacity, moe_noise=noise),
            "dense-4F": dict(d_ff=4 * f)}[name]


def sync() -> None:
    if DEVICE["type"] == "cuda":
        torch.cuda.synchronize()


def rng_state() -> tuple:
    """The generators router noise draws from (the CPU's, and the GPU's when training there)."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state() if DEVICE["type"] == "cuda" else None)


def set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def data() -> Path:
    if not (DATA / "meta.json").is_file():
        prepare("smollm2", [str(PTB / "ptb.train.txt")], DATA, val=str(PTB / "ptb.valid.txt"))
    return DATA


def compact(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Renumber the ids onto those the training split uses (val's must be among them)."""
    used = np.unique(train)
    if not np.isin(val, used).all():
        raise SystemExit("validation ids outside the training ids: use --full-vocab")
    return np.searchsorted(used, train), np.searchsorted(used, val), len(used)


def model_config(name: str, vocab: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, **{**shape(), **variant(name)})


def lr_at(step: int, steps: int) -> float:
    """10% linear warmup to --lr, then cosine down to a tenth of it."""
    lr, min_lr = SETUP["lr"], SETUP["lr"] / 10
    warmup = max(1, steps // 10)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


class Run:
    """One model in training: its optimizer, its batch generator and its measurements."""

    def __init__(self, name: str, vocab: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.name, self.model = name, Transformer(model_config(name, vocab))
        self.model.init_weights(std=0.02, seed=seed)
        self.model.to(DEVICE["type"]).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1,
                                     betas=(0.9, 0.99), fused=True)
        self.gen = torch.Generator().manual_seed(seed)  # the same batches for every variant
        self.rng = rng_state()  # router noise: each model its own stream
        self.times: list[float] = []
        self.utilisation: list[tuple[int, dict]] = []

    def step(self, tokens: np.ndarray, step: int, steps: int) -> None:
        batch, block = SETUP["batch"], SETUP["context"]
        starts = torch.randint(len(tokens) - block - 1, (batch,), generator=self.gen).tolist()
        rows = torch.from_numpy(np.stack([tokens[s: s + block + 1] for s in starts])
                                .astype(np.int64)).to(DEVICE["type"])
        set_rng_state(self.rng)
        sync()
        t0 = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, steps)
        with torch.autocast(DEVICE["type"], torch.bfloat16, **AUTOCAST):
            loss = causal_lm_loss(self.model(rows[:, :-1]), rows[:, 1:])
            loss = loss + moe_aux_loss(self.model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync()
        self.times.append(time.perf_counter() - t0)
        self.rng = rng_state()
        stats = moe_stats(self.model)
        if stats:
            self.utilisation.append((step, stats))

    @torch.no_grad()
    def val_loss(self, tokens: np.ndarray, windows: int) -> float:
        self.model.eval()
        losses, batch, block = [], SETUP["batch"], SETUP["context"]
        for i in range(0, windows, batch):
            n = min(batch, windows - i)
            rows = torch.from_numpy(np.stack([tokens[(i + j) * block: (i + j + 1) * block + 1]
                                              for j in range(n)]).astype(np.int64))
            rows = rows.to(DEVICE["type"])
            with torch.autocast(DEVICE["type"], torch.bfloat16, **AUTOCAST):
                losses.append(causal_lm_loss(self.model(rows[:, :-1]), rows[:, 1:]).item() * n)
        self.model.train()
        return sum(losses) / windows


def train_seed(seed: int, steps: int, train: np.ndarray, val: np.ndarray, vocab: int,
               windows: int, eval_every: int) -> dict:
    """Train the chosen variants in lockstep; validation loss every `eval_every` steps (and at
    the end) as a curve of (training tokens, loss)."""
    runs = [Run(name, vocab, seed) for name in CHOSEN]
    curves: dict[str, list] = {run.name: [] for run in runs}
    tokens_per_step = SETUP["batch"] * SETUP["context"]
    for step in tqdm(range(steps), desc=f"seed {seed}", unit="step"):
        for run in runs if step % 2 == 0 else runs[::-1]:
            run.step(train, step, steps)
        if (eval_every and (step + 1) % eval_every == 0) or step + 1 == steps:
            for run in runs:
                curves[run.name].append(((step + 1) * tokens_per_step,
                                         run.val_loss(val, windows)))
    return {run.name: {"val_loss": curves[run.name][-1][1], "curve": curves[run.name],
                       "tokens_per_s": tokens_per_step / statistics.median(run.times[1:]),
                       "utilisation": run.utilisation} for run in runs}


def peak_memory(name: str, vocab: int) -> float:
    """MiB by which one training step raises the peak RSS of a fresh process (this script
    with --peak NAME); on a GPU, the peak of CUDA's allocator."""
    flags = (["--bf16"] if AUTOCAST["enabled"] else []) + ["--device", DEVICE["type"]]
    flags += [f"--{key.replace('_', '-')}={value}" for key, value in SETUP.items()]
    out = subprocess.run([sys.executable, __file__, "--peak", name, "--vocab", str(vocab), *flags],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_child(name: str, vocab: int) -> None:
    tokens = np.random.default_rng(0).integers(0, vocab, 10 * SETUP["batch"] * SETUP["context"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = Run(name, vocab, 0)
    for step in range(2):
        run.step(tokens, step, 2)
    if DEVICE["type"] == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def plot(utilisation: dict[str, list], path: Path) -> None:
    """Expert shares over training: one row per sparse variant, one panel per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, u in utilisation.items() if u]
    layers = list(utilisation[names[0]][0][1]["moe_utilisation"])
    fig, axes = plt.subplots(len(names), len(layers), figsize=(3 * len(layers), 2.6 * len(names)),
                             sharex=True, sharey=True, squeeze=False)
    for row, name in zip(axes, names, strict=True):
        steps = [s for s, _ in utilisation[name]]
        for ax, layer in zip(row, layers, strict=True):
            shares = zip(*(st["moe_utilisation"][layer] for _, st in utilisation[name]),
                         strict=True)
            for share in shares:
                ax.plot(steps, share, lw=0.8)
            ax.plot(steps, [st["moe_dropped"] for _, st in utilisation[name]], c="black",
                    lw=1, ls=":")
            ax.axhline(1 / 8, c="grey", ls="--", lw=0.8)
            ax.set_title(f"{name}, layer {layer}", fontsize=9)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("share of assignments")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_curves(per_seed: list[dict], path: Path) -> None:
    """Validation loss against training tokens: the mean over seeds, shaded from the lowest
    to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name in CHOSEN:
        curves = np.array([[loss for _, loss in s[name]["curve"]] for s in per_seed])
        tokens = [t / 1e6 for t, _ in per_seed[0][name]["curve"]]
        ax.plot(tokens, curves.mean(0), lw=1.2, label=name)
        ax.fill_between(tokens, curves.min(0), curves.max(0), alpha=0.25)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"PTB, {len(per_seed)} seed(s): mean, band = min–max over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def summarise(per_seed: list[dict], vocab: int, memory: dict[str, float]) -> dict:
    out = {}
    for name in CHOSEN:
        losses = [s[name]["val_loss"] for s in per_seed]
        rates = [s[name]["tokens_per_s"] for s in per_seed]
        out[name] = {"val_loss_mean": statistics.mean(losses),
                     "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                     "val_losses": losses, "tokens_per_s": statistics.median(rates),
                     "tokens_per_s_ratio_to_dense": statistics.median(
                         r / s["dense"]["tokens_per_s"]
                         for r, s in zip(rates, per_seed, strict=True)),
                     "peak_memory_mib": memory.get(name),
                     "params": param_counts(model_config(name, vocab))}
    return out


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def report(record: dict) -> None:
    print(f"{'variant':9}{'val loss':>16}{'tok/s':>8}{'×dense':>8}{'params':>9}"
          f"{'active':>9}{'act-emb':>9}{'peak MiB':>9}")
    for name, r in record["results"].items():
        p = r["params"]
        print(f"{name:9}{r['val_loss_mean']:9.4f} ±{r['val_loss_std']:.4f}"
              f"{r['tokens_per_s']:8.0f}{r['tokens_per_s_ratio_to_dense']:8.2f}"
              f"{p['total'] / 1e6:8.2f}M{p['active'] / 1e6:8.2f}M"
              f"{p['active_no_embed'] / 1e6:8.2f}M{r['peak_memory_mib']:9.0f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val-windows", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=0,
                        help="validation loss also every N steps: curves in NAME_val.png")
    for key, default in SETUP.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="train only these (dense must be among them)")
    parser.add_argument("--full-vocab", action="store_true",
                        help="keep SmolLM2's 49,152 ids instead of the 9,514 PTB uses")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default="moe",
                        help="results name: benchmarks/results/NAME.json and NAME_utilisation.png")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds an earlier run with the same settings finished")
    parser.add_argument("--peak", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.width, args.layers, args.ffn, args.context, args.batch, args.steps) < 1:
        parser.error("--width, --layers, --ffn, --context, --batch and --steps must be >= 1")
    if "dense" not in args.variants:
        parser.error("--variants must include dense: tokens/s are reported relative to it")
    if args.capacity_factor <= 0:
        parser.error("--capacity-factor must be > 0 (1.0: exactly N/n tokens per expert)")
    if args.ffn % 2:
        parser.error("--ffn must be even (topk experts have width F/2)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    AUTOCAST["enabled"] = args.bf16
    DEVICE["type"] = args.device
    SETUP.update({key: getattr(args, key) for key in SETUP})
    CHOSEN[:] = [name for name in VARIANTS if name in args.variants]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible to torch")
    if args.peak:
        return peak_child(args.peak, args.vocab)
    d = data()
    meta = json.loads((d / "meta.json").read_text())
    train, val = load_tokens(d, "train"), load_tokens(d, "val")
    vocab = meta["vocab_size"]
    if not args.full_vocab:
        train, val, vocab = compact(np.asarray(train), np.asarray(val))
    settings = {**SETUP, "shape": shape(), "vocab": vocab, "device": args.device,
                "variants": CHOSEN, "dtype": "bf16" if args.bf16 else "fp32", "steps": args.steps,
                "eval_every": args.eval_every, "train_tokens": args.steps * SETUP["batch"]
                * SETUP["context"], "val_tokens": args.val_windows * SETUP["context"]}
    path = RESULTS / f"{args.out}.json"
    done = {}
    if args.resume and path.is_file():
        old = json.loads(path.read_text())
        # records made before --capacity-factor existed ran switch at 1.25
        if {"capacity_factor": 1.25, **old.get("settings", {})} == settings:
            done = {int(seed): r for seed, r in old["per_seed"].items()}
    memory = {name: peak_memory(name, vocab) for name in CHOSEN}
    for seed in args.seeds:
        if seed not in done:
            done[seed] = train_seed(seed, args.steps, train, val, vocab, args.val_windows,
                                    args.eval_every)
            if seed != args.seeds[0]:  # the picture shows the first seed's utilisation
                for result in done[seed].values():
                    result.pop("utilisation")
        per_seed = [done[s] for s in args.seeds if s in done]
        record = {"benchmark": "moe", "device": device_name(args.device),
                  "threads": args.threads, "settings": settings,
                  "seeds": [s for s in args.seeds if s in done],
                  "results": summarise(per_seed, vocab, memory), "per_seed": done}
        atomic_write_text(path, json.dumps(record) + "\n")  # after every seed: nothing lost
    if CHOSEN != ["dense"]:
        plot({n: per_seed[0][n]["utilisation"] for n in CHOSEN},
             RESULTS / f"{args.out}_utilisation.png")
    if args.eval_every:
        plot_curves(per_seed, RESULTS / f"{args.out}_val.png")
    report(record)
    print(json.dumps({k: v for k, v in record.items() if k != "per_seed"}))


if __name__ == "__main__":
    main()
