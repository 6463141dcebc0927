"""The training loop, for every family and objective (`train/objective.py`).

Each step draws `grad_accum` batches from the objective's sampler (`data/batches.py`),
accumulates the objective's loss, clips the global gradient norm and takes one optimizer
step at the learning rate of a linear warmup followed by cosine decay:

    lr(s) = lr · s / warmup                                          s < warmup
    lr(s) = min_lr + ½ (lr − min_lr) (1 + cos(π (s − warmup) / (max_steps − warmup)))

Mixed precision: bf16 autocast with fp32 master weights. A non-finite loss skips the step;
five in a row stop the run. Every `eval_every` steps: the objective's validation loss (and
its parts, such as NSP accuracy), perplexity for the LM objectives, bits per byte for the
causal LM, a checkpoint, metrics.jsonl and loss.png. `--resume` restores model, heads,
optimizer, step and every RNG, so the losses after a resume equal an uninterrupted run's.
Memory options: `train.activation_checkpointing` (recompute each block in the backward
pass) and `train.fsdp` (shard parameters, gradients and optimizer state over processes).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmforge.data.batches import Sampler
from lmforge.data.lines import Specials, specials_for
from lmforge.data.prepare import load_tokens
from lmforge.errors import LmforgeError
from lmforge.io import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.model.moe import moe_aux_loss, moe_stats
from lmforge.model.transformer import Transformer
from lmforge.tokenizers import load_tokenizer
from lmforge.train import distributed
from lmforge.train import state as ckpt
from lmforge.train.config import RunConfig, TrainSettings
from lmforge.train.metrics import MetricsLog
from lmforge.train.objective import ObjectiveModel, make_sampler, needs_specials, resolve
from lmforge.train.precision import Precision, pick_device

MAX_NONFINITE = 5


def lr_at(step: int, t: TrainSettings) -> float:
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(module: torch.nn.Module, t: TrainSettings, matrices: set[str]
                   ) -> torch.optim.Optimizer:
    """Weight decay on the parameters named in `matrices` only (not on norms' gains or
    biases); names, because FSDP flattens the parameters it shards."""
    params = [(distributed.param_name(n), p) for n, p in module.named_parameters()
              if p.requires_grad]
    groups = [{"params": [p for n, p in params if n in matrices], "weight_decay": t.weight_decay},
              {"params": [p for n, p in params if n not in matrices], "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)


def build(run: RunConfig, vocab_size: int, sp: Specials | None = None) -> Transformer:
    """The model of the run's [model] table; its vocabulary covers the data's ids and the
    objective's reserved special ids (`data/lines.py`)."""
    fields = {"max_seq_len": run.train.block_size, **run.model}
    need = sp.vocab_size if sp is not None else vocab_size
    fields.setdefault("vocab_size", need)
    if sp is not None and fields.get("family") == "encoder_decoder":
        fields.setdefault("decoder_start_id", sp.pad)  # T5 starts the decoder with [PAD]
    config = ModelConfig.from_dict(fields)
    if config.vocab_size < need:
        raise LmforgeError(f"model.vocab_size={config.vocab_size} is smaller than the data's "
                           f"vocabulary with the objective's special tokens ({need})")
    if config.max_seq_len < run.train.block_size:
        raise LmforgeError("model.max_seq_len must be at least train.block_size")
    model = Transformer(config)
    model.init_weights(std=0.02, seed=run.train.seed)
    return model


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
    zero = torch.zeros((), device=next(model.parameters()).device)
    squares = torch.stack([
        sum(((p.grad.float() ** 2).sum() for p in b.parameters() if p.grad is not None), zero)
        for _, b in blocks])
    if sharded:
        squares = world.sum(squares)
    return {name: v for (name, _), v in zip(blocks, squares.sqrt().tolist(), strict=True)}


def bytes_per_token(tokenizer, tokens: np.ndarray) -> float:
    sample = np.asarray(tokens[:100_000])
    return len(tokenizer.decode(sample.tolist()).encode("utf-8")) / len(sample)


def train(run: RunConfig, resume: bool = False, stop_after: int | None = None,
          progress: bool = True) -> Path:
    """Train, writing the run directory; `stop_after` pauses after that step (resumable)."""
    world = distributed.setup(pick_device(run.train.device))
    try:
        return _train(run, resume, stop_after, progress and world.main, world)
    finally:
        distributed.teardown(world)


def save_checkpoint(run_dir: Path, step: int, wrapped: torch.nn.Module, task: ObjectiveModel,
                    optimizer: torch.optim.Optimizer, extra: dict, tokenizer, t: TrainSettings,
                    world: distributed.World, improved: bool) -> None:
    """Gather (every rank, under FSDP) and write (rank 0) the model, heads and state."""
    weights = distributed.full_state_dict(wrapped if distributed.is_fsdp(wrapped) else task)
    state = {"optimizer": distributed.optimizer_state(wrapped, optimizer), **extra,
             "heads": {k: v for k, v in weights.items() if not k.startswith("model.")}}
    if world.main:
        model = {k.removeprefix("model."): v for k, v in weights.items()
                 if k.startswith("model.")}
        ckpt.save(run_dir, step, task.model.config, model, tokenizer, state, t.keep_last,
                  improved)


def _train(run: RunConfig, resume: bool, stop_after: int | None, progress: bool,
           world: distributed.World) -> Path:
    t = run.train
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(t.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_tokens = load_tokens(run.data_dir, "train")
    meta = json.loads((run.data_dir / "meta.json").read_text())
    val_tokens = load_tokens(run.data_dir, "val") if "val" in meta["tokens"] else train_tokens
    tokenizer = load_tokenizer(run.data_dir / "tokenizer")
    objective = resolve(run.model.get("family", "decoder"), t)
    sp = specials_for(tokenizer) if needs_specials(objective) else None
    torch.manual_seed(t.seed)
    task = ObjectiveModel(build(run, meta["vocab_size"], sp), objective, t.nsp)
    task.model.activation_checkpointing = t.activation_checkpointing
    task.to(world.device)
    matrices = {n for n, p in task.named_parameters() if p.dim() >= 2}
    start = task.model.config.decoder_start_id
    sampler = make_sampler(objective, train_tokens, tokenizer, t, sp, start)
    val_sampler = make_sampler(objective, val_tokens, tokenizer, t, sp, start)
    gen = torch.Generator().manual_seed(t.seed)
    step, best, saved = 0, float("inf"), None
    if resume:
        checkpoint = ckpt.latest(run_dir)
        from lmforge.interop.checkpoint import load_checkpoint

        saved = ckpt.load_state(checkpoint)
        weights = {f"model.{k}": v for k, v in load_checkpoint(checkpoint)[1].items()}
        task.load_state_dict({**weights, **saved.get("heads", {})})
        gen.set_state(saved["batch_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if "cuda_rng" in saved and world.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], world.device)
        step, best = saved["step"], saved["best_val"]
    wrapped = distributed.wrap(task, world, t.fsdp)
    sharded = distributed.is_fsdp(wrapped)
    precision = Precision(t.dtype, world.device, sharded)
    t.dtype = precision.dtype  # "auto" resolved: run_config.json records what the run used
    optimizer = make_optimizer(wrapped if sharded else task, t, matrices)
    if saved is not None:
        distributed.load_optimizer_state(wrapped, optimizer, saved["optimizer"])
        precision.load_state_dict(saved.get("scaler", {}))
    if world.main:
        atomic_write_text(run_dir / "run_config.json",
                          json.dumps(run.to_dict(), indent=2) + "\n")
    log = MetricsLog(run_dir, step if resume else None) if world.main else None
    bpt = bytes_per_token(tokenizer, val_tokens) if objective == "causal_lm" else None
    rows = world.rows(t.batch_size)
    task.train()
    nonfinite = 0
    last = min(t.max_steps, stop_after or t.max_steps)
    bar = tqdm(total=t.max_steps, initial=step, desc=f"train {objective} ({t.dtype})",
               unit="step", disable=not progress)
    tokens_per_step = t.batch_size * t.block_size * t.grad_accum
    while step < last:
        t0 = time.perf_counter()
        lr = lr_at(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(t.grad_accum):
            batch = task.shard(sampler(gen, t.batch_size), rows, world.size)
            with precision.autocast():
                loss = wrapped(to_device(batch, world.device))["loss"] / t.grad_accum
                aux = moe_aux_loss(task.model) / t.grad_accum  # 0 without experts
            precision.backward(loss + aux)
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
        precision.unscale(optimizer)
        norms = layer_grad_norms(task.model, world, sharded) if step % t.log_every == 0 \
            else None
        grad_norm = distributed.clip_grad_norm(
            wrapped if sharded else task, t.grad_clip if t.grad_clip > 0 else float("inf"))
        stepped = precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        if not stepped and log:
            log.log({"step": step, "skipped": "inf/NaN gradients in fp16", **precision.metrics()})
        rate = tokens_per_step / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", tok_s=f"{rate:,.0f}")
        if norms is not None and log:
            log.log({"step": step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                     "tokens_per_s": rate, "tokens_seen": step * tokens_per_step,
                     "layer_grad_norms": norms, **precision.metrics(),
                     **moe_stats(task.model)})
        if step % t.eval_every == 0 or step == t.max_steps or step == last:
            if log or sharded:  # under FSDP every rank takes part in the forward passes
                row = evaluate(wrapped if sharded else task, val_sampler, t, step, bpt,
                               objective in ("causal_lm", "prefix_lm"), precision)
                improved = row["val_loss"] < best
                best = min(best, row["val_loss"])
                extra = {"step": step, "best_val": best, "batch_rng": gen.get_state(),
                         "torch_rng": torch.get_rng_state(), "scaler": precision.state_dict()}
                if world.device.type == "cuda":
                    extra["cuda_rng"] = torch.cuda.get_rng_state(world.device)
                save_checkpoint(run_dir, step, wrapped, task, optimizer, extra, tokenizer, t,
                                world, improved)
            if log:
                log.log(row)
                log.plot(run_dir / "loss.png")
                log.plot_experts(run_dir / "experts.png")
                bar.write(f"step {step}: val loss {row['val_loss']:.4f}")
            world.barrier()
    bar.close()
    return run_dir
