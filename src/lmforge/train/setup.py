"""Setting a run up: its data and tokenizer, its model (a fresh one from [model], or
`train.init_from`'s, with `train.trainable` frozen around it: `train/base.py`), its
objective (`objectives/registry.py`) and samplers, the optimizer, and on `--resume` the
state the last checkpoint saved. `setup` returns a `Trainer` that `train/loop.py` steps,
evaluates and saves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.data.batches import Sampler
from lmforge.data.lines import Specials, specials_for
from lmforge.data.prepare import load_tokens
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import load_checkpoint, read_base
from lmforge.io import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.objectives.registry import Objective, SamplerInputs, resolve
from lmforge.tokenizers import Tokenizer, load_tokenizer
from lmforge.train import distributed
from lmforge.train import state as ckpt
from lmforge.train.base import (
    FrozenBase,
    build_from_base,
    check_model_table,
    frozen_base,
    load_base,
    run_tokenizer,
)
from lmforge.train.config import RunConfig, TrainSettings
from lmforge.train.metrics import MetricsLog
from lmforge.train.objective import ObjectiveModel
from lmforge.train.precision import Precision


@dataclass
class Data:
    """A prepared data directory's splits (val = train when it has none) and tokenizer."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    tokenizer: Tokenizer


def load_data(directory: Path) -> Data:
    train = load_tokens(directory, "train")
    meta = json.loads((directory / "meta.json").read_text())
    val = load_tokens(directory, "val") if "val" in meta["tokens"] else train
    return Data(train, val, meta, load_tokenizer(directory / "tokenizer"))


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


def make_optimizer(module: nn.Module, t: TrainSettings, matrices: set[str]
                   ) -> torch.optim.Optimizer:
    """The trainable parameters only (frozen ones never reach it); weight decay on those
    named in `matrices` only (not on norms' gains or biases); names, because FSDP flattens
    the parameters it shards. An empty group (no trainable matrix) is left out."""
    params = [(distributed.param_name(n), p) for n, p in module.named_parameters()
              if p.requires_grad]
    groups = [{"params": [p for n, p in params if n in matrices], "weight_decay": t.weight_decay},
              {"params": [p for n, p in params if n not in matrices], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)


def bytes_per_token(tokenizer: Tokenizer, tokens: np.ndarray) -> float:
    sample = np.asarray(tokens[:100_000])
    return len(tokenizer.decode(sample.tolist()).encode("utf-8")) / len(sample)


@dataclass
class Trainer:
    """Everything a run holds between steps."""

    run: RunConfig
    world: distributed.World
    run_dir: Path
    objective: Objective
    tokenizer: Tokenizer
    task: ObjectiveModel  # the Transformer and the objective's heads
    wrapped: nn.Module  # `task`, or its DDP / FSDP wrapper
    precision: Precision
    optimizer: torch.optim.Optimizer
    sampler: Sampler
    val_sampler: Sampler
    gen: torch.Generator  # the batch generator (its state is saved for exact resume)
    log: MetricsLog | None  # rank 0 only
    bytes_per_token: float | None  # causal LM: for bits per byte
    frozen: FrozenBase | None  # set when train.trainable freezes a base
    step: int = 0
    best: float = math.inf
    nonfinite: int = 0  # non-finite losses in a row

    @property
    def t(self) -> TrainSettings:
        return self.run.train

    @property
    def sharded(self) -> bool:
        return distributed.is_fsdp(self.wrapped)

    @property
    def module(self) -> nn.Module:
        """What the optimizer, clipping and evaluation see: FSDP's wrapper (it owns the
        shards), else the plain task (DDP's wrapper renames the parameters, and its forward
        is a collective, while only rank 0 evaluates)."""
        return self.wrapped if self.sharded else self.task


def make_model(run: RunConfig, data: Data
               ) -> tuple[Transformer, Objective, Tokenizer, Specials | None, FrozenBase | None]:
    """The model, objective, tokenizer and special ids of a run, from [model] or from
    `train.init_from` (whose architecture and tokenizer the run then takes)."""
    t = run.train
    base = load_base(t.init_from) if t.init_from else None
    if base is not None:
        check_model_table(run.model, base.config, base.spec)
    objective = resolve(base.config.family if base else run.model.get("family", "decoder"), t)
    tokenizer = data.tokenizer if base is None else \
        run_tokenizer(base, data.tokenizer, Path(run.data_dir), data.meta, data.val)
    sp = specials_for(tokenizer) if objective.specials else None
    torch.manual_seed(t.seed)
    if base is None:
        return build(run, data.meta["vocab_size"], sp), objective, tokenizer, sp, None
    need = sp.vocab_size if sp is not None else data.meta["vocab_size"]
    model = build_from_base(base, need, t.block_size)
    frozen = frozen_base(base, model, t.trainable) if t.trainable else None
    return model, objective, tokenizer, sp, frozen


def restore(task: ObjectiveModel, gen: torch.Generator, run_dir: Path,
            frozen: FrozenBase | None, world: distributed.World) -> dict:
    """Load the latest checkpoint's weights, heads and RNG states; return its state."""
    checkpoint = ckpt.latest(run_dir)
    saved = ckpt.load_state(checkpoint)
    _, weights, _ = load_checkpoint(checkpoint, with_base=False)
    recorded = read_base(checkpoint)
    if frozen is not None:
        frozen.check(checkpoint, recorded, set(weights))
        weights = {**task.model.state_dict(), **weights}  # the base is already in place
    elif recorded is not None:
        raise LmforgeError(f"{checkpoint} holds only parameters trained on top of "
                           f"{recorded['init_from']!r}; resume with the train.init_from and "
                           "train.trainable the run started with")
    task.load_state_dict({**{f"model.{k}": v for k, v in weights.items()},
                          **saved.get("heads", {})})
    gen.set_state(saved["batch_rng"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and world.device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], world.device)
    return saved


def setup(run: RunConfig, resume: bool, world: distributed.World,
          configured: Objective | None = None) -> Trainer:
    """A run ready for its first step (or for the step after its last checkpoint);
    `configured`: an instance of the run's objective with settings of its own (the teacher
    of `lmforge distill`) in place of the registry's."""
    t = run.train
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(t.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(Path(run.data_dir))
    model, objective, tokenizer, sp, frozen = make_model(run, data)
    if configured is not None:
        if configured.name != objective.name:
            raise LmforgeError(f"train.objective = {objective.name!r}, but the objective given "
                               f"is {configured.name!r}")
        objective = configured
    task = ObjectiveModel(model, objective)
    task.model.activation_checkpointing = t.activation_checkpointing
    task.to(world.device)
    matrices = {n for n, p in task.named_parameters() if p.dim() >= 2}
    inputs = SamplerInputs(tokenizer, t, sp, task.model.config.decoder_start_id)
    sampler, val_sampler = objective.sampler(data.train, inputs), \
        objective.sampler(data.val, inputs)
    gen = torch.Generator().manual_seed(t.seed)
    saved = restore(task, gen, run_dir, frozen, world) if resume else None
    wrapped = distributed.wrap(task, world, t.fsdp)
    precision = Precision(t.dtype, world.device, distributed.is_fsdp(wrapped))
    t.dtype = precision.dtype  # "auto" resolved: run_config.json records what the run used
    optimizer = make_optimizer(wrapped if distributed.is_fsdp(wrapped) else task, t, matrices)
    if saved is not None:
        distributed.load_optimizer_state(wrapped, optimizer, saved["optimizer"])
        precision.load_state_dict(saved.get("scaler", {}))
    if world.main:
        atomic_write_text(run_dir / "run_config.json",
                          json.dumps(run.to_dict(), indent=2) + "\n")
    step = saved["step"] if saved else 0
    log = MetricsLog(run_dir, step if resume else None) if world.main else None
    bpt = bytes_per_token(tokenizer, data.val) if objective.bits_per_byte else None
    task.train()
    return Trainer(run, world, run_dir, objective, tokenizer, task, wrapped, precision,
                   optimizer, sampler, val_sampler, gen, log, bpt, frozen, step,
                   saved["best_val"] if saved else math.inf)
