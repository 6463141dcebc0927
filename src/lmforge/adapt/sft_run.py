"""`lmforge finetune --task sft`: instruction SFT of a chat model, full or LoRA.

    >>> finetune("smollm2", "lora", "sft", "../shared/data/self-instruct/seed_tasks.jsonl",
    ...          {"out_dir": "runs/sft-lora", "max_steps": 60, "batch_size": 4})

Conversations are read and rendered by `adapt/sft.py` (chat template, assistant-only labels),
batched by `adapt/sft_batches.py` (padded or packed), and trained by the trainer's own loop
through `finetune.assemble` (checkpoints, exact resume, metrics.jsonl with `val_loss` on
`eval_batches` sampled held-out batches, loss.png). At the end the whole held-out set's loss
on assistant tokens is computed (`eval_loss` in results.json and metrics.jsonl), and the
result is written as
- `lora`: OUT/adapter/, a LoRA adapter in PEFT's layout on the unchanged base
  (`--adapter OUT/adapter` on generate, chat, serve, web, eval);
- `full`: OUT/model/, a checkpoint directory (`--model OUT/model`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmforge.adapt import finetune as ft
from lmforge.adapt import lora
from lmforge.adapt import settings as cfg
from lmforge.adapt.adapter import AdapterBase, save_adapter
from lmforge.adapt.sft import Example, encode_all, heldout_loss, read_conversations
from lmforge.adapt.sft_batches import Sft, SftSampler
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.fingerprint import content_hash
from lmforge.io import atomic_write_text
from lmforge.train import distributed
from lmforge.train.base import Base, build_from_base, frozen_base, load_base
from lmforge.train.objective import ObjectiveModel
from lmforge.train.precision import pick_device
from lmforge.train.setup import Trainer


def subset(items: list, n: int, seed: int) -> list:
    """`n` items drawn without replacement with random.Random(seed), in file order (all
    when n ≤ 0); as `labeled.sample` draws labelled rows."""
    if n <= 0 or n >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def read_examples(base: Base, data: str, s: cfg.FinetuneSettings
                  ) -> tuple[list[Example], list[Example] | None, int]:
    """(training examples, held-out examples or None, max_len) rendered with the model's
    chat template."""
    if base.tokenizer is None:
        raise LmforgeError(f"{base.spec} has no tokenizer; SFT renders conversations as text")
    if base.config.family != "decoder":
        raise LmforgeError(f"--task sft trains a decoder (a chat model); {base.spec} is a "
                           f"{base.config.family} model")
    max_len = min(s.max_len, base.config.max_seq_len)
    train = encode_all(base.tokenizer, subset(read_conversations(data), s.train_subset,
                                              s.subset_seed), max_len)
    held = encode_all(base.tokenizer, subset(read_conversations(s.eval_data), s.eval_subset,
                                             s.subset_seed), max_len) if s.eval_data else None
    return train, held, max_len


def build(method: str, s: cfg.FinetuneSettings, base: Base, data: str,
          examples: tuple[list[Example], list[Example] | None], max_len: int, resume: bool,
          world: distributed.World) -> Trainer:
    """The SFT `Trainer`: the base (with LoRA attached and everything else frozen for lora),
    the `sft` objective and the samplers."""
    model = build_from_base(base, base.config.vocab_size, max_len)
    frozen = None
    if method == "lora":
        ft.attach_lora_from(model, s)
        frozen = frozen_base(base, model, list(lora.TRAINABLE_PATTERNS))
    task = ObjectiveModel(model, Sft())
    if method == "full" and s.freeze_embeddings:
        ft.freeze_embeddings(task)
    task.to(world.device)
    pad = base.tokenizer.special.pad or 0
    train = SftSampler(examples[0], s.packing, max_len, pad)
    val = SftSampler(examples[1], s.packing, max_len, pad) if examples[1] else train
    return ft.assemble(method, s, task, base.tokenizer, (train, val), frozen, data, resume,
                       world)


def finetune_sft(model: str, method: str, data: str, s: cfg.FinetuneSettings, resume: bool,
                 stop_after: int | None, progress: bool) -> ft.Result:
    """Train `method` on the conversations in `data`; see the module docstring."""
    base = load_base(model)
    train, held, max_len = read_examples(base, data, s)
    world = distributed.setup(pick_device(s.train.device))
    if world.size > 1:
        raise LmforgeError("lmforge finetune runs in one process; run it without torchrun")
    run_dir = Path(s.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = build(method, s, base, data, (train, held), max_len, resume, world)
    trainable, total, done = ft.run_recorded(
        tr, {"model": model, "method": method, "task": "sft", "data": data}, s, stop_after,
        progress)
    if not done:  # paused by stop_after: resume to finish
        return ft.Result(run_dir, None, 0, trainable, total)
    loss, n = heldout_loss(tr.task.model, held) if held else (None, 0)
    if loss is not None:
        tr.log.log({"step": tr.step, "eval_loss": loss, "eval_tokens": n})
    save(method, base, tr)
    atomic_write_text(run_dir / "results.json", json.dumps(
        {"method": method, "task": "sft", "eval_loss": loss, "eval_tokens": n,
         "train_examples": len(train), "trainable_params": trainable, "total_params": total,
         "steps": tr.step}, indent=2) + "\n")
    return ft.Result(run_dir, None, n, trainable, total, loss)


def save(method: str, base: Base, tr: Trainer) -> None:
    """OUT/adapter/ (lora, on the unchanged base) or OUT/model/ (full)."""
    model = tr.task.model
    if method == "lora":
        save_adapter(tr.run_dir / "adapter", model, "lora",
                     AdapterBase(base.spec, content_hash(base.state_dict)), force=True)
        return
    weights = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(tr.run_dir / "model", model.config, weights, tr.tokenizer)
