"""Knowledge distillation of a language model: a small decoder (the student) trained on a
teacher's softened next-token distribution, through the trainer of `lmforge train`.

    lmforge prepare --tokenizer smollm2 --input ../shared/data/tinyshakespeare/train.txt \\
        --val ../shared/data/tinyshakespeare/val.txt --out data/shakespeare-bpe
    lmforge distill --config configs/distill-smollm2-student.toml

The config is a run config (`train/config.py`: [model] the student, [data], [train]) plus a
[distill] table (`DistillSettings`). The loss is the registry's `distill` objective
(`objectives/registry.py`, formula in `objectives/distillation.py`), configured here with its
teacher, so the run is an ordinary `lmforge train` run: checkpoints of the student (a model
`--model RUN_DIR` loads), exact `--resume`, metrics.jsonl (val_loss, val_kl, val_ce) and
loss.png.

Design choices:
- The student reads the teacher's tokenizer (the data must be prepared with it; checked as
  for `train.init_from`), so both distributions are over the same vocabulary.
- Batches are chunks of block + 1 tokens at fixed offsets (`adapt/distill_cache.py`), drawn
  uniformly from the first `chunks` chunks of a split: the teacher then sees the same
  context as the student, and its targets can be cached by chunk.
- `teacher_logits = "cache"`: the teacher's top-k log-probabilities per position, computed
  once and cached on disk (renormalised over the top k at training time); `"online"`: the
  teacher (eval mode, no gradient) runs on every batch and gives its whole distribution.
- α = 0 trains the same student on the same batches without a teacher (the benchmark's
  baseline, `benchmarks/distill.py`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge import strict
from lmforge.adapt.distill_cache import (
    TopK,
    cache_key,
    cached_topk,
    chunk_count,
    chunk_rows,
    teacher_topk,
)
from lmforge.data.batches import Batch
from lmforge.errors import LmforgeError
from lmforge.interop.fingerprint import content_hash
from lmforge.io import atomic_write_text
from lmforge.model.transformer import Transformer
from lmforge.objectives.registry import Distill
from lmforge.train.base import Base, load_base, run_tokenizer
from lmforge.train.config import RunConfig, read_config, resolve_init_from, run_config
from lmforge.train.loop import train
from lmforge.train.precision import pick_device
from lmforge.train.setup import load_data


@dataclass
class DistillSettings:
    teacher: str = "smollm2"  # any --model spec
    temperature: float = 2.0  # T
    alpha: float = 0.5  # weight of the soft targets; 0: no teacher (CE only)
    teacher_logits: str = "cache"  # cache (top-k on disk) | online (every batch, whole)
    top_k: int = 32  # cache: log-probabilities kept per position
    cache_dir: str = "~/.cache/lmforge/distill"
    chunks: int = 0  # chunks of block + 1 tokens drawn from in each split; 0: all
    teacher_batch: int = 8  # chunks per teacher forward pass when filling the cache
    teacher_dtype: str = "fp32"  # fp32 | bf16

    def validate(self) -> None:
        if self.temperature <= 0:
            raise LmforgeError(f"distill.temperature = {self.temperature}: it must be > 0")
        if not 0 <= self.alpha <= 1:
            raise LmforgeError(f"distill.alpha = {self.alpha}: it must be between 0 and 1")
        if self.teacher_logits not in ("cache", "online"):
            raise LmforgeError(f"distill.teacher_logits = {self.teacher_logits!r}: use cache "
                               "(top-k on disk) or online (the teacher on every batch)")
        if self.teacher_dtype not in ("fp32", "bf16"):
            raise LmforgeError(f"distill.teacher_dtype = {self.teacher_dtype!r}: use fp32 or "
                               "bf16")
        for name in ("top_k", "teacher_batch"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"distill.{name} must be at least 1")
        if self.chunks < 0:
            raise LmforgeError("distill.chunks must be 0 (all) or a number of chunks")


class TeacherWindows:
    """Chunks drawn uniformly (from the given generator only, for exact resume), with the
    teacher's targets for them: ids, targets (ids shifted left), teacher_logprobs and, for a
    top-k teacher, teacher_ids."""

    def __init__(self, tokens: np.ndarray, block: int, n: int, teacher: CachedTeacher |
                 OnlineTeacher, top: TopK | None = None) -> None:
        self.tokens, self.block, self.n, self.teacher, self.top = tokens, block, n, teacher, top

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        index = torch.randint(self.n, (n,), generator=gen)
        rows = chunk_rows(self.tokens, self.block, index)
        ids = rows[:, :-1]
        extra = self.top.targets(index) if self.top is not None else self.teacher.targets(ids)
        return {"ids": ids, "targets": rows[:, 1:], **extra}


class OnlineTeacher:
    """The teacher on every batch: its whole distribution, computed without gradient."""

    def __init__(self, model: Transformer, chunks: int) -> None:
        self.model, self.chunks = model.eval().requires_grad_(False), chunks

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids.to(self.model.device))

    def targets(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"teacher_logprobs": F.log_softmax(self.logits(ids).float(), dim=-1)}

    def sampler(self, tokens: np.ndarray, block: int) -> TeacherWindows:
        return TeacherWindows(tokens, block, chunk_count(tokens, block, self.chunks), self)


class CachedTeacher(OnlineTeacher):
    """The teacher's top k per position, from the cache (filled on first use)."""

    def __init__(self, model: Transformer, teacher_hash: str, s: DistillSettings,
                 cache_dir: Path, progress: bool) -> None:
        super().__init__(model, s.chunks)
        self.hash, self.s, self.cache_dir, self.progress = teacher_hash, s, cache_dir, progress

    def sampler(self, tokens: np.ndarray, block: int) -> TeacherWindows:
        n, k = chunk_count(tokens, block, self.chunks), self.s.top_k
        key = cache_key(self.hash, tokens, block, k, n)
        top = cached_topk(self.cache_dir, key, lambda: teacher_topk(
            self.logits, tokens, block, k, n, self.s.teacher_batch, self.progress))
        return TeacherWindows(tokens, block, n, self, top)


def load_config(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, DistillSettings]:
    """The run config and its [distill] table; train.objective is "distill"."""
    raw = read_config(path, overrides)
    s = strict.from_dict(DistillSettings, raw.pop("distill", {}), "distill setting")
    s.validate()
    objective = raw.get("train", {}).get("objective", "distill")
    if objective != "distill":
        raise LmforgeError(f"train.objective = {objective!r}: lmforge distill trains with the "
                           "distill objective; leave train.objective out")
    raw.setdefault("train", {})["objective"] = "distill"
    run = run_config(raw, Path(path))
    s.teacher = resolve_init_from(s.teacher, Path(path).parent)  # a path: from the config's
    cache = Path(s.cache_dir).expanduser()
    s.cache_dir = str(cache if cache.is_absolute() else Path(path).parent / cache)
    return run, s


def check_student(run: RunConfig, base: Base, vocab_size: int) -> None:
    if run.train.init_from:
        raise LmforgeError("lmforge distill trains a student from scratch from [model]; "
                           "remove train.init_from")
    student = run.model.get("vocab_size", vocab_size)
    if student != base.config.vocab_size:
        raise LmforgeError(f"the student's vocabulary ({student}) is not the teacher "
                           f"{base.spec!r}'s ({base.config.vocab_size}); prepare the data with "
                           f"`lmforge prepare --tokenizer {base.spec}` and leave "
                           "model.vocab_size out")


def load_teacher(run: RunConfig, s: DistillSettings, progress: bool = True) -> OnlineTeacher:
    """The teacher, checked against the data's tokenizer and the student's vocabulary."""
    from lmforge.api import build_model, parse_dtype  # the API imports the engine: late

    data = load_data(Path(run.data_dir))
    base = load_base(s.teacher)
    if base.tokenizer is None:
        raise LmforgeError(f"distill.teacher = {s.teacher!r} has no tokenizer; the student "
                           "must read the teacher's tokens")
    run_tokenizer(base, data.tokenizer, Path(run.data_dir), data.meta, data.val)
    check_student(run, base, data.meta["vocab_size"])
    model = build_model(base.config, base.state_dict, parse_dtype(s.teacher_dtype),
                        base.transforms)  # a quantized teacher's layers
    model.to(pick_device(run.train.device))
    if s.teacher_logits == "online":
        return OnlineTeacher(model, s.chunks)
    return CachedTeacher(model, content_hash(base.state_dict), s, Path(s.cache_dir), progress)


def distill(run: RunConfig, s: DistillSettings, resume: bool = False,
            stop_after: int | None = None, progress: bool = True) -> Path:
    """Train the student of `run` on `s.teacher`; returns the run directory (its
    distill.json records the [distill] table)."""
    objective = Distill(load_teacher(run, s, progress), s.temperature, s.alpha)
    out = Path(run.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "distill.json", json.dumps(asdict(s), indent=2) + "\n")
    return train(run, resume, stop_after, progress, configured=objective)
