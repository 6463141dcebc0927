"""The training loop for causal decoders (the other families' objectives plug in later).

Each step draws `grad_accum` batches of random windows from the memory-mapped token stream,
accumulates the causal-LM loss, clips the global gradient norm and takes one optimizer step
at the learning rate of a linear warmup followed by cosine decay:

    lr(s) = lr · s / warmup                                          s < warmup
    lr(s) = min_lr + ½ (lr − min_lr) (1 + cos(π (s − warmup) / (max_steps − warmup)))

Mixed precision: bf16 autocast with fp32 master weights. A non-finite loss skips the step;
five in a row stop the run. Every `eval_every` steps: validation loss, perplexity, bits per
token and per byte, a checkpoint, metrics.jsonl and loss.png. `--resume` restores model,
optimizer, step and every RNG, so the losses after a resume equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmforge.data.prepare import load_tokens
from lmforge.errors import LmforgeError
from lmforge.io import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.objectives.causal_lm import causal_lm_loss
from lmforge.tokenizers import load_tokenizer
from lmforge.train import distributed
from lmforge.train import state as ckpt
from lmforge.train.config import RunConfig, TrainSettings
from lmforge.train.metrics import MetricsLog

MAX_NONFINITE = 5


def lr_at(step: int, t: TrainSettings) -> float:
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def get_batch(tokens: np.ndarray, batch: int, block: int, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random windows of `block` tokens and the same windows shifted by one."""
    if len(tokens) <= block + 1:
        raise LmforgeError(f"the data has {len(tokens)} tokens, too few for windows of "
                           f"{block}; lower train.block_size")
    starts = torch.randint(len(tokens) - block - 1, (batch,), generator=gen).tolist()
    rows = torch.from_numpy(np.stack([tokens[s: s + block + 1] for s in starts]).astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


def make_optimizer(model: torch.nn.Module, t: TrainSettings) -> torch.optim.Optimizer:
    """Weight decay on matrices only (not on norms' gains or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)


def build(run: RunConfig, vocab_size: int) -> Transformer:
    fields = {"max_seq_len": run.train.block_size, **run.model}
    fields.setdefault("vocab_size", vocab_size)
    config = ModelConfig.from_dict(fields)
    if config.vocab_size < vocab_size:
        raise LmforgeError(f"model.vocab_size={config.vocab_size} is smaller than the data's "
                           f"vocabulary ({vocab_size})")
    if config.max_seq_len < run.train.block_size:
        raise LmforgeError("model.max_seq_len must be at least train.block_size")
    model = Transformer(config)
    model.init_weights(std=0.02, seed=run.train.seed)
    return model


@torch.no_grad()
def evaluate(model: Transformer, tokens: np.ndarray, t: TrainSettings, step: int,
             bytes_per_token: float) -> dict:
    """Mean loss over `eval_batches` windows drawn with a fixed seed (comparable across evals,
    and independent of the training RNG)."""
    model.eval()
    gen = torch.Generator().manual_seed(t.seed + 1)
    losses = []
    for _ in range(t.eval_batches):
        x, y = get_batch(tokens, t.batch_size, t.block_size, gen)
        with torch.autocast("cpu", torch.bfloat16, enabled=t.dtype == "bf16"):
            losses.append(causal_lm_loss(model(x), y).item())
    model.train()
    loss = sum(losses) / len(losses)
    return {"step": step, "val_loss": loss, "val_ppl": math.exp(loss),
            "val_bits_per_token": loss / math.log(2),
            "val_bits_per_byte": loss / math.log(2) / bytes_per_token}


def layer_grad_norms(model: Transformer) -> dict[str, float]:
    """Gradient norm per block: the diagnostic for vanishing and exploding gradients."""
    out = {}
    for i, block in enumerate(model.layers):
        grads = [p.grad.norm() for p in block.parameters() if p.grad is not None]
        out[str(i)] = torch.stack(grads).norm().item() if grads else 0.0
    return out


def train(run: RunConfig, resume: bool = False, stop_after: int | None = None,
          progress: bool = True) -> Path:
    """Train, writing the run directory; `stop_after` pauses after that step (resumable)."""
    world = distributed.setup()
    try:
        return _train(run, resume, stop_after, progress and world.main, world)
    finally:
        distributed.teardown(world)


def _train(run: RunConfig, resume: bool, stop_after: int | None, progress: bool,
           world: distributed.World) -> Path:
    t = run.train
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(t.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_tokens, val_tokens = load_tokens(run.data_dir, "train"), None
    meta = json.loads((run.data_dir / "meta.json").read_text())
    if "val" in meta["tokens"]:
        val_tokens = load_tokens(run.data_dir, "val")
    tokenizer = load_tokenizer(run.data_dir / "tokenizer")
    torch.manual_seed(t.seed)
    model = build(run, meta["vocab_size"])
    optimizer = make_optimizer(model, t)
    rows = world.rows(t.batch_size)
    gen = torch.Generator().manual_seed(t.seed)
    step, best = 0, float("inf")
    if resume:
        checkpoint = ckpt.latest(run_dir)
        from lmforge.interop.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(checkpoint)[1])
        saved = ckpt.load_state(checkpoint)
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["batch_rng"])
        torch.set_rng_state(saved["torch_rng"])
        step, best = saved["step"], saved["best_val"]
    ddp = distributed.wrap(model, world)
    if world.main:
        atomic_write_text(run_dir / "run_config.json",
                          json.dumps(run.to_dict(), indent=2) + "\n")
    log = MetricsLog(run_dir, step if resume else None) if world.main else None
    sample = val_tokens if val_tokens is not None else train_tokens
    sample = np.asarray(sample[:100_000])
    bytes_per_token = len(tokenizer.decode(sample.tolist()).encode("utf-8")) / len(sample)
    model.train()
    nonfinite = 0
    last = min(t.max_steps, stop_after or t.max_steps)
    bar = tqdm(total=t.max_steps, initial=step, desc="train", unit="step", disable=not progress)
    tokens_per_step = t.batch_size * t.block_size * t.grad_accum
    while step < last:
        t0 = time.perf_counter()
        lr = lr_at(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(t.grad_accum):
            x, y = get_batch(train_tokens, t.batch_size, t.block_size, gen)
            with torch.autocast("cpu", torch.bfloat16, enabled=t.dtype == "bf16"):
                loss = causal_lm_loss(ddp(x[rows]), y[rows]) / t.grad_accum
            loss.backward()
            total += loss.item()
        total = world.mean(total)
        step += 1
        if not math.isfinite(total):
            nonfinite += 1
            optimizer.zero_grad(set_to_none=True)
            if log:
                log.log({"step": step, "skipped": "non-finite loss"})
            if nonfinite >= MAX_NONFINITE:
                raise LmforgeError(f"{MAX_NONFINITE} non-finite losses in a row at step {step};"
                                   " lower train.lr or use train.dtype = \"fp32\"")
            continue
        nonfinite = 0
        norms = layer_grad_norms(model) if step % t.log_every == 0 else None
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf")).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rate = tokens_per_step / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", tok_s=f"{rate:,.0f}")
        if norms is not None and log:
            log.log({"step": step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                     "tokens_per_s": rate, "tokens_seen": step * tokens_per_step,
                     "layer_grad_norms": norms})
        if log and (step % t.eval_every == 0 or step == t.max_steps or step == last):
            row = evaluate(model, val_tokens if val_tokens is not None else train_tokens, t,
                           step, bytes_per_token)
            log.log(row)
            improved = row["val_loss"] < best
            best = min(best, row["val_loss"])
            state = {"optimizer": optimizer.state_dict(), "step": step, "best_val": best,
                     "batch_rng": gen.get_state(), "torch_rng": torch.get_rng_state()}
            ckpt.save(run_dir, step, model.config, model, tokenizer, state, t.keep_last,
                      improved)
            log.plot(run_dir / "loss.png")
            bar.write(f"step {step}: val loss {row['val_loss']:.4f}, "
                      f"{row['val_bits_per_byte']:.3f} bits/byte")
        if step % t.eval_every == 0 or step == last:
            world.barrier()
    bar.close()
    return run_dir
