"""Fine-tuning a trained model on a labelled task through the trainer's own loop.

    >>> finetune("minilm", "full", "seqcls", "../shared/data/sst2/train.tsv",
    ...          {"eval_data": "../shared/data/sst2/dev.tsv", "out_dir": "runs/sst2",
    ...           "max_steps": 300})

Methods:
- `full`: every parameter trains, with layer-wise learning-rate decay (`layer_decay` = ξ:
  block i of n gets lr·ξ^(n−i), the embeddings lr·ξ^(n+1), the head and final norm lr;
  Clark et al., 2020, ELECTRA, and Bao et al., 2022, BEiT) and optionally frozen
  embeddings (`freeze_embeddings`: token, position and segment tables and their norm).
- `probe`: the model is frozen; its pooled features of one layer (`layer`, default the
  last) are computed once and cached (`adapt/probe.py`), and the head trains on them.
- `prompt`, `ptuning2`: the model is frozen; a soft prompt (`adapt/prompt_tuning.py`) or
  P-Tuning v2's per-layer prefix (`adapt/ptuning2.py`) trains with the head, and both are
  saved as one adapter of that method.
- `lora`: the model is frozen; LoRA matrices on the `targets` projections (`adapt/lora.py`)
  train with the head, saved as one LoRA adapter (PEFT's layout) carrying the head.

Task `sft` (instruction SFT on conversations, methods full and lora) is `adapt/sft_run.py`,
assembled from the same parts (`assemble`).

The trainer (`train/loop.py`) knows no objective by name, so fine-tuning is not another
loop: `seqcls` is an `Objective` (`adapt/heads.py`) whose batches come from labelled rows
(or cached features) instead of a token stream, and `build_trainer` assembles a
`train.setup.Trainer` from those pieces (`make_optimizer`, `Precision`, `restore`,
`MetricsLog`), which `train.loop.run_steps` steps: the same schedule, clipping, bf16
autocast, checkpoints and exact resume, metrics.jsonl, loss.png and progress bar as
`lmforge train`. At the end the whole evaluation set is scored (results.json), and the
head is written as an adapter directory on top of its base: the unchanged model for
`probe`, the fine-tuned weights saved in `model/` for `full`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.adapt import lora, prompt_tuning, ptuning2
from lmforge.adapt import settings as cfg
from lmforge.adapt.adapter import AdapterBase, save_adapter
from lmforge.adapt.classifier import attach
from lmforge.adapt.heads import SeqCls, check_pooling, pool
from lmforge.adapt.labeled import (
    Encoded,
    FeatureSampler,
    Labelled,
    RowSampler,
    encode,
    read_labelled,
    sample,
)
from lmforge.adapt.probe import cached_features
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.fingerprint import content_hash
from lmforge.io import atomic_write_text
from lmforge.tokenizers.base import Tokenizer
from lmforge.train import distributed
from lmforge.train.base import Base, FrozenBase, build_from_base, frozen_base, load_base
from lmforge.train.config import RunConfig
from lmforge.train.loop import run_steps
from lmforge.train.metrics import MetricsLog
from lmforge.train.objective import ObjectiveModel
from lmforge.train.precision import Precision, pick_device
from lmforge.train.setup import Trainer, make_optimizer, restore

EMBEDDINGS = ("embed.", "type_embed.", "abs_position.", "embed_norm.")
LAYER = re.compile(r"model\.layers\.(\d+)\.")


@dataclass
class Result:
    run_dir: Path
    eval_acc: float | None  # on the whole evaluation set (None without one)
    eval_n: int
    trainable: int  # parameters the optimizer updated
    total: int  # parameters of the model and head
    eval_loss: float | None = None  # sft: held-out loss on assistant tokens


def layer_decay_optimizer(optimizer: torch.optim.Optimizer, task: ObjectiveModel,
                          decay: float) -> torch.optim.Optimizer:
    """`optimizer`'s groups split by depth, each with lr_scale = decay^(n+1−depth): depth 0
    the embeddings, i+1 block i, n+1 the final norm and the head."""
    n = task.model.config.n_layer
    names = {id(p): name for name, p in task.named_parameters()}

    def depth(name: str) -> int:
        if m := LAYER.match(name):
            return int(m.group(1)) + 1
        return 0 if name.removeprefix("model.").startswith(EMBEDDINGS) else n + 1

    groups = list(optimizer.param_groups)
    optimizer.param_groups.clear()  # before any step: no state refers to the old groups
    for group in groups:
        by_depth: dict[int, list[torch.nn.Parameter]] = {}
        for p in group["params"]:
            by_depth.setdefault(depth(names[id(p)]), []).append(p)
        for d, ps in sorted(by_depth.items()):
            optimizer.add_param_group({"params": ps, "weight_decay": group["weight_decay"],
                                       "lr_scale": decay ** (n + 1 - d)})
    return optimizer


def freeze_embeddings(task: ObjectiveModel) -> None:
    for name, p in task.model.named_parameters():
        if name.startswith(EMBEDDINGS):
            p.requires_grad_(False)


@dataclass
class Prepared:
    """The task's data as the trainer's samplers and the final scoring read it."""

    sampler: RowSampler | FeatureSampler
    val_sampler: RowSampler | FeatureSampler
    eval_rows: Encoded | None
    eval_features: torch.Tensor | None


def prepare(method: str, s: cfg.FinetuneSettings, base: Base, task: ObjectiveModel,
            train: Encoded, evaluation: Encoded | None, data: str, progress: bool
            ) -> Prepared:
    """Samplers over token rows, or over the cached features of a frozen model (probe)."""
    if method != "probe":
        val = evaluation or train
        return Prepared(RowSampler(train), RowSampler(val), evaluation, None)
    model = task.model
    n = model.config.n_layer
    layer = n if s.layer < 0 else s.layer
    if layer > n:
        raise LmforgeError(f"layer={s.layer}: the model has layers 0 to {n}")
    cache = Path(s.cache_dir).expanduser()
    model_hash = content_hash(base.state_dict)
    common = dict(task=str(Path(data).resolve()), layers=[layer], pooling=task.objective.pooling,
                  cache_dir=cache, batch_size=s.feature_batch, progress=progress)
    x = cached_features(model, model_hash, train, split="train", **common)[layer]
    train_sampler = FeatureSampler(x, train.labels)
    if evaluation is None:
        return Prepared(train_sampler, train_sampler, None, None)
    ex = cached_features(model, model_hash, evaluation, split="eval", **common)[layer]
    return Prepared(train_sampler, FeatureSampler(ex, evaluation.labels), None, ex)


@torch.no_grad()
def score(task: ObjectiveModel, prepared: Prepared, labels: torch.Tensor, batch_size: int
          ) -> float:
    """Accuracy over the whole evaluation set, in order (no sampling)."""
    task.eval()
    device = task.model.device
    correct = 0
    for start in range(0, len(labels), batch_size):
        index = list(range(start, min(start + batch_size, len(labels))))
        if prepared.eval_features is not None:
            u = prepared.eval_features[index].to(device)
        else:
            b = {k: v.to(device) for k, v in prepared.eval_rows.batch(index).items()}
            h = task.model.hidden(b["ids"], token_types=b["token_types"],
                                  attention_mask=b["attention_mask"])
            u = pool(h, b["attention_mask"], task.objective.pooling)
        correct += int((task.head(u).argmax(-1).cpu() == labels[index]).sum())
    task.train()
    return correct / len(labels)


def build_trainer(method: str, s: cfg.FinetuneSettings, base: Base, data: str,
                  labelled: tuple[Labelled, Labelled | None], resume: bool,
                  world: distributed.World, progress: bool
                  ) -> tuple[Trainer, Prepared, Encoded | None]:
    """A `Trainer` for the method: model, head, samplers, optimizer, resumed state."""
    t = s.train
    run_dir = Path(t.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = base.config
    objective = SeqCls(len(labelled[0].names), check_pooling(s.pooling, config),
                       s.head_hidden, s.dropout)
    model = build_from_base(base, config.vocab_size, min(s.max_len, config.max_seq_len))
    frozen = None
    if method != "full":
        patterns = input_adapter(method, s, model, base.tokenizer, labelled[0].names)
        frozen = frozen_base(base, model, patterns)
    torch.manual_seed(t.seed)  # the head's initialisation
    task = ObjectiveModel(model, objective)
    if method == "full" and s.freeze_embeddings:
        freeze_embeddings(task)
    task.to(world.device)
    train = encode(base.tokenizer, config, labelled[0], s.max_len)
    evaluation = encode(base.tokenizer, config, labelled[1], s.max_len) \
        if labelled[1] is not None else None
    prepared = prepare(method, s, base, task, train, evaluation, data, progress)
    tr = assemble(method, s, task, base.tokenizer, (prepared.sampler, prepared.val_sampler),
                  frozen, data, resume, world)
    return tr, prepared, evaluation


def assemble(method: str, s: cfg.FinetuneSettings, task: ObjectiveModel, tokenizer: Tokenizer,
             samplers: tuple, frozen: FrozenBase | None, data: str, resume: bool,
             world: distributed.World) -> Trainer:
    """The `Trainer` around a task model on its device: optimizer over the trainable
    parameters (with layer-wise decay for full), precision, metrics, resumed state."""
    t = s.train
    run_dir = Path(t.out_dir)
    gen = torch.Generator().manual_seed(t.seed)
    saved = restore(task, gen, run_dir, frozen, world) if resume else None
    precision = Precision(t.dtype, world.device)
    t.dtype = precision.dtype
    matrices = {n for n, p in task.named_parameters() if p.dim() >= 2}
    optimizer = make_optimizer(task, t, matrices)
    if method == "full" and s.layer_decay != 1.0:
        optimizer = layer_decay_optimizer(optimizer, task, s.layer_decay)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        precision.load_state_dict(saved.get("scaler", {}))
    step = saved["step"] if saved else 0
    log = MetricsLog(run_dir, step if resume else None)
    task.train()
    run = RunConfig({}, Path(data), t)
    return Trainer(run, world, run_dir, task.objective, tokenizer, task, task, precision,
                   optimizer, samplers[0], samplers[1], gen, log, None, frozen,
                   step, saved["best_val"] if saved else math.inf)


def check_method(method: str, task: str) -> None:
    if method not in cfg.METHODS:
        raise LmforgeError(f"--method {method!r}: use one of {', '.join(cfg.METHODS)}")
    if task not in cfg.TASKS:
        raise LmforgeError(f"--task {task!r}: use seqcls (sequence classification) or sft "
                           "(instruction SFT on conversations)")
    if method not in cfg.TASKS[task]:
        raise LmforgeError(f"--task {task} takes --method {' or '.join(cfg.TASKS[task])}, "
                           f"not {method}")


def finetune(model: str, method: str, task: str, data: str | Path,
             settings: Mapping[str, object] = (), resume: bool = False,
             stop_after: int | None = None, progress: bool = True) -> Result:
    """Fine-tune `model` (any --model spec) on the labelled file `data` by `method`;
    `settings`: FinetuneSettings and TrainSettings fields by name (`adapt/settings.py`)."""
    check_method(method, task)
    s = cfg.parse(method, dict(settings))
    data = str(data)
    if task == "sft":
        from lmforge.adapt.sft_run import finetune_sft

        return finetune_sft(model, method, data, s, resume, stop_after, progress)
    base = load_base(model)
    if base.tokenizer is None:
        raise LmforgeError(f"{model} has no tokenizer; fine-tuning reads text")
    train = sample(read_labelled(data, s.text_column, s.label_column), s.train_subset,
                   s.subset_seed)
    evaluation = sample(read_labelled(s.eval_data, s.text_column, s.label_column, train.names),
                        s.eval_subset, s.subset_seed) if s.eval_data else None
    world = distributed.setup(pick_device(s.train.device))
    if world.size > 1:
        raise LmforgeError("lmforge finetune runs in one process; run it without torchrun")
    tr, prepared, eval_rows = build_trainer(method, s, base, data, (train, evaluation),
                                            resume, world, progress)
    run_dir = tr.run_dir
    trainable, total, done = run_recorded(tr, {"model": model, "method": method, "task": task,
                                               "data": data}, s, stop_after, progress)
    if not done:  # paused by stop_after: resume to finish
        return Result(run_dir, None, 0, trainable, total)
    acc = score(tr.task, prepared, eval_rows.labels, s.train.batch_size) \
        if eval_rows is not None else None
    n = len(eval_rows.labels) if eval_rows is not None else 0
    if acc is not None:
        tr.log.log({"step": tr.step, "eval_acc": acc, "eval_n": n})
    finish(method, s, base, tr, train.names)
    atomic_write_text(run_dir / "results.json", json.dumps(
        {"method": method, "eval_acc": acc, "eval_n": n, "trainable_params": trainable,
         "total_params": total, "steps": tr.step}, indent=2) + "\n")
    return Result(run_dir, acc, n, trainable, total)


def run_recorded(tr: Trainer, run: dict, s: cfg.FinetuneSettings, stop_after: int | None,
                 progress: bool) -> tuple[int, int, bool]:
    """Record the run (`finetune_config.json`: `run` + the settings), run its steps;
    (trainable parameters, all parameters, whether it reached max_steps)."""
    atomic_write_text(tr.run_dir / "finetune_config.json", json.dumps(
        {**run, "settings": cfg.to_dict(s)}, indent=2) + "\n")
    run_steps(tr, stop_after, progress)
    params = list(tr.task.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params), tr.step >= s.train.max_steps


def finish(method: str, s: cfg.FinetuneSettings, base: Base, tr: Trainer,
           names: list[str]) -> None:
    """Write the head as an adapter on its base: the model as it came for `probe`, the
    fine-tuned weights (saved to model/) for `full`."""
    settings = {"pooling": tr.objective.pooling, "n_classes": len(names), "labels": names,
                "head_hidden": s.head_hidden, "max_len": s.max_len,
                "layer": s.layer if method == "probe" else -1,
                "text_column": s.text_column, "label_column": s.label_column}
    model = tr.task.model
    if method != "full":  # the base as it came
        on = AdapterBase(base.spec, content_hash(base.state_dict))
    else:
        weights = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(tr.run_dir / "model", model.config, weights, tr.tokenizer)
        on = AdapterBase(str((tr.run_dir / "model").resolve()), content_hash(weights))
    attach(model, tr.task.head, settings)
    save_adapter(tr.run_dir / "adapter", model, "head" if method == "full" else method, on,
                 force=True)


def input_adapter(method: str, s: cfg.FinetuneSettings, model: torch.nn.Module,
                  tokenizer: Tokenizer, names: list[str]) -> list[str]:
    """Attach prompt tuning's soft prompt or P-Tuning v2's prefix to `model`; the patterns
    of its trainable parameters (none for probe)."""
    if method == "prompt":
        words = s.label_words.split(",") if s.label_words else names
        if s.init == "labels" and len(words) != len(names):
            raise LmforgeError(f"label_words names {len(words)} words for {len(names)} "
                               "classes; give one per class, in label order")
        label_ids = [tokenizer.encode_spans([(w.strip(), False)]) for w in words]
        weight = prompt_tuning.init_prompt(model, s.n_virtual, s.init, label_ids, s.train.seed)
        prompt_tuning.attach_prompt(model, weight, {"init": s.init})
        return list(prompt_tuning.TRAINABLE_PATTERNS)
    if method == "ptuning2":
        ptuning2.attach_ptuning(model, s.n_prefix, s.reparam, s.prefix_std, s.train.seed)
        return list(ptuning2.TRAINABLE_PATTERNS)
    if method == "lora":
        attach_lora_from(model, s)
        return list(lora.TRAINABLE_PATTERNS)
    return []


def attach_lora_from(model: torch.nn.Module, s: cfg.FinetuneSettings) -> None:
    """LoRA from the settings r, alpha, lora_dropout, targets; A drawn from the run's seed."""
    torch.manual_seed(s.train.seed)
    targets = tuple(p.strip() for p in s.targets.split(",") if p.strip())
    lora.attach_lora(model, lora.LoraConfig(s.r, s.alpha, s.lora_dropout, targets))
