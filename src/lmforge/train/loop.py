"""The training loop, for every family and objective (`objectives/registry.py`), in three
stages: `setup` (`train/setup.py`: data, model, objective, optimizer, resumed state),
`train_step` (one optimizer step) and `evaluate_and_save`.

Each step draws `grad_accum` batches from the objective's sampler (`data/batches.py`),
accumulates the objective's loss, clips the global gradient norm and takes one optimizer
step at the learning rate of a linear warmup followed by cosine decay:

    lr(s) = lr · s / warmup                                          s < warmup
    lr(s) = min_lr + ½ (lr − min_lr) (1 + cos(π (s − warmup) / (max_steps − warmup)))

Mixed precision: bf16 autocast with fp32 master weights. A non-finite loss skips the step;
five in a row stop the run. Every `eval_every` steps: the objective's validation loss (and
its parts, such as NSP accuracy), perplexity for the LM objectives, bits per byte for the
causal LM, a checkpoint, metrics.jsonl and loss.png. `--resume` restores model, heads,
optimizer, step and every RNG, so the losses after a resume equal an uninterrupted run's
(with a frozen base too: `train/base.py`). Memory options: `train.activation_checkpointing`
(recompute each block in the backward pass) and `train.fsdp` (shard parameters, gradients
and optimizer state over processes).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.data.batches import Sampler
from lmforge.errors import LmforgeError
from lmforge.model.moe import moe_aux_loss, moe_stats
from lmforge.model.transformer import Transformer
from lmforge.objectives.registry import Objective
from lmforge.train import distributed
from lmforge.train import state as ckpt
from lmforge.train.config import RunConfig, TrainSettings
from lmforge.train.precision import Precision, pick_device
from lmforge.train.setup import Trainer, setup

MAX_NONFINITE = 5


def lr_at(step: int, t: TrainSettings) -> float:
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return batch if device.type == "cpu" else {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(module: torch.nn.Module, sampler: Sampler, t: TrainSettings, step: int,
             bytes_per_token: float | None, lm: bool, precision: Precision) -> dict:
    """Mean losses over `eval_batches` batches drawn with a fixed seed (comparable across
    evals, and independent of the training RNG)."""
    module.eval()
    gen = torch.Generator().manual_seed(t.seed + 1)
    sums: dict[str, float] = {}
    for _ in range(t.eval_batches):
        with precision.autocast():
            out = module(to_device(sampler(gen, t.batch_size), precision.device))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.item()
    module.train()
    means = {k: v / t.eval_batches for k, v in sums.items()}
    loss = means.pop("loss")
    row = {"step": step, "val_loss": loss, **{f"val_{k}": v for k, v in means.items()},
           "val_bits_per_token": loss / math.log(2)}
    if lm:
        row["val_ppl"] = math.exp(loss)
    if bytes_per_token is not None:
        row["val_bits_per_byte"] = loss / math.log(2) / bytes_per_token
    return row


def layer_grad_norms(model: Transformer, world: distributed.World, sharded: bool
                     ) -> dict[str, float]:
    """Gradient norm per block (encoder blocks as encoder.i): the diagnostic for vanishing
    and exploding gradients. Under FSDP each rank holds a shard: squares are summed."""
    blocks = [(str(i), b) for i, b in enumerate(model.layers)]
    if hasattr(model, "encoder"):
        blocks = [(f"encoder.{i}", b) for i, b in enumerate(model.encoder.layers)] + blocks
    zero = torch.zeros((), device=model.device)
    squares = torch.stack([
        sum(((p.grad.float() ** 2).sum() for p in b.parameters() if p.grad is not None), zero)
        for _, b in blocks])
    if sharded:
        squares = world.sum(squares)
    return {name: v for (name, _), v in zip(blocks, squares.sqrt().tolist(), strict=True)}


def accumulate(tr: Trainer) -> float:
    """Forward and backward `grad_accum` batches; their mean loss over every rank."""
    t, world = tr.t, tr.world
    rows = world.rows(t.batch_size)
    total = 0.0
    for _ in range(t.grad_accum):
        batch = tr.task.shard(tr.sampler(tr.gen, t.batch_size), rows, world.size)
        with tr.precision.autocast():
            loss = tr.wrapped(to_device(batch, world.device))["loss"] / t.grad_accum
            aux = moe_aux_loss(tr.task.model) / t.grad_accum  # 0 without experts
        tr.precision.backward(loss + aux)
        total += loss.item()
    return world.mean(total)


def train_step(tr: Trainer) -> dict | None:
    """One optimizer step (`tr.step` counts it); its loss and tokens/s, or None when a
    non-finite loss skipped it."""
    t0 = time.perf_counter()
    t, precision, optimizer = tr.t, tr.precision, tr.optimizer
    lr = lr_at(tr.step, t)
    for group in optimizer.param_groups:  # lr_scale: layer-wise decay (adapt/finetune.py)
        group["lr"] = lr * group.get("lr_scale", 1.0)
    total = accumulate(tr)
    tr.step += 1
    if not math.isfinite(total):
        tr.nonfinite += 1
        optimizer.zero_grad(set_to_none=True)
        if tr.log:
            tr.log.log({"step": tr.step, "skipped": "non-finite loss"})
        if tr.nonfinite >= MAX_NONFINITE:
            raise LmforgeError(f"{MAX_NONFINITE} non-finite losses in a row at step {tr.step};"
                               " lower train.lr or use train.dtype = \"fp32\"")
        return None
    tr.nonfinite = 0
    precision.unscale(optimizer)
    norms = layer_grad_norms(tr.task.model, tr.world, tr.sharded) \
        if tr.step % t.log_every == 0 else None
    grad_norm = distributed.clip_grad_norm(
        tr.module, t.grad_clip if t.grad_clip > 0 else float("inf"))
    stepped = precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    if not stepped and tr.log:
        tr.log.log({"step": tr.step, "skipped": "inf/NaN gradients in fp16",
                    **precision.metrics()})
    tokens = t.batch_size * t.block_size * t.grad_accum
    rate = tokens / (time.perf_counter() - t0)
    if norms is not None and tr.log:
        tr.log.log({"step": tr.step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_s": rate, "tokens_seen": tr.step * tokens,
                    "layer_grad_norms": norms, **precision.metrics(),
                    **moe_stats(tr.task.model)})
    return {"loss": total, "tokens_per_s": rate}


def save_checkpoint(tr: Trainer, improved: bool) -> None:
    """Gather (every rank, under FSDP) and write (rank 0) the model, heads and state; on a
    frozen base, only the trained parameters of the model."""
    weights = distributed.full_state_dict(tr.wrapped if tr.sharded else tr.task)
    state = {"optimizer": distributed.optimizer_state(tr.wrapped, tr.optimizer),
             "step": tr.step, "best_val": tr.best, "batch_rng": tr.gen.get_state(),
             "torch_rng": torch.get_rng_state(), "scaler": tr.precision.state_dict(),
             "heads": {k: v for k, v in weights.items() if not k.startswith("model.")}}
    if tr.world.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(tr.world.device)
    if not tr.world.main:
        return
    model = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    if tr.frozen is not None:
        model = {k: model[k] for k in tr.frozen.trainable}
    ckpt.save(tr.run_dir, tr.step, tr.task.model.config, model, tr.tokenizer, state,
              tr.t.keep_last, improved, tr.frozen.record() if tr.frozen else None)


def evaluate_and_save(tr: Trainer) -> dict | None:
    """Validation losses, a checkpoint (and best/ when the loss improved), metrics.jsonl
    and the plots; returns the validation row on rank 0."""
    if not (tr.log or tr.sharded):  # under FSDP every rank takes part in the forward passes
        tr.world.barrier()
        return None
    row = evaluate(tr.module, tr.val_sampler, tr.t, tr.step, tr.bytes_per_token,
                   tr.objective.lm, tr.precision)
    improved = row["val_loss"] < tr.best
    tr.best = min(tr.best, row["val_loss"])
    save_checkpoint(tr, improved)
    if tr.log:
        tr.log.log(row)
        tr.log.plot(tr.run_dir / "loss.png")
        tr.log.plot_experts(tr.run_dir / "experts.png")
    tr.world.barrier()
    return row if tr.log else None


def train(run: RunConfig, resume: bool = False, stop_after: int | None = None,
          progress: bool = True, configured: Objective | None = None) -> Path:
    """Train, writing the run directory; `stop_after` pauses after that step (resumable);
    `configured`: the run's objective with its own settings (`setup`)."""
    world = distributed.setup(pick_device(run.train.device))
    try:
        tr = setup(run, resume, world, configured)
        run_steps(tr, stop_after, progress)
        return tr.run_dir
    finally:
        distributed.teardown(world)


def run_steps(tr: Trainer, stop_after: int | None = None, progress: bool = True) -> None:
    """Step a set-up run to train.max_steps (or `stop_after`), evaluating and saving every
    eval_every steps; any `Trainer` (`setup`'s, or fine-tuning's: adapt/finetune.py)."""
    t = tr.t
    last = min(t.max_steps, stop_after or t.max_steps)
    with tqdm(total=t.max_steps, initial=tr.step, unit="step",
              desc=f"train {tr.objective.name} ({t.dtype})",
              disable=not (progress and tr.world.main)) as bar:
        while tr.step < last:
            done = train_step(tr)
            if done is None:
                continue
            bar.update(1)
            bar.set_postfix(loss=f"{done['loss']:.4f}", tok_s=f"{done['tokens_per_s']:,.0f}")
            if tr.step % t.eval_every == 0 or tr.step == t.max_steps or tr.step == last:
                row = evaluate_and_save(tr)
                if row is not None:
                    bar.write(f"step {tr.step}: val loss {row['val_loss']:.4f}")
