"""A training run's configuration: a TOML file with [model], [data] and [train] tables.

    [model]          # every ModelConfig field (vocab_size may be left out: the data sets it)
    d_model = 384
    [data]
    dir = "../data/shakespeare-char"   # relative paths are relative to the config file
    [train]
    max_steps = 5000
    objective = "mlm"                  # default: the model family's (objectives/registry.py)
    init_from = "smollm2"              # start from a trained model (train/base.py); then
    trainable = ["layers.29.*"]        # [model] may be left out; train only these parameters

`--set train.lr=3e-4` overrides one value (parsed as TOML: numbers, booleans, strings).
Unknown keys are errors that name them. `train.init_from` is a built-in model name or a
path (relative to the config file, like `data.dir` and `train.out_dir`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lmforge import strict
from lmforge.errors import LmforgeError


@dataclass
class TrainSettings:
    out_dir: str = "runs/run"
    batch_size: int = 32
    block_size: int = 256  # tokens per training window
    grad_accum: int = 1
    max_steps: int = 1000
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1  # matrices only
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.9  # sgd
    grad_clip: float = 1.0  # 0: off
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (loss-scaled) | auto: train/precision.py
    device: str = "auto"  # auto (a CUDA GPU if visible) | cpu | cuda
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 10
    keep_last: int = 2
    seed: int = 1337
    threads: int = 0  # 0: torch's default
    objective: str = ""  # "": the family's default (objectives/registry.py)
    init_from: str = ""  # a model to start from: built-in name, GGUF, HF or lmforge dir/run
    trainable: list[str] = field(default_factory=list)  # fnmatch patterns; []: train all
    nsp: bool = False  # mlm: add next-sentence prediction (BERT); false: RoBERTa's MLM only
    mask_rate: float = 0.15  # mlm: share of tokens chosen for 80/10/10 corruption
    noise_density: float = 0.15  # span_corruption: noise share; denoising: noise rate
    mean_span: float = 3.0  # span_corruption: mean span length
    denoising: list[str] = field(default_factory=lambda: ["infill", "permute"])  # BART noises
    activation_checkpointing: bool = False  # recompute each block in backward (less memory)
    fsdp: bool = False  # under torchrun: FullyShardedDataParallel instead of DDP

    def validate(self) -> None:
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise LmforgeError(f"train.optimizer={self.optimizer!r}: use adamw, adam or sgd")
        if self.dtype not in ("fp32", "bf16", "fp16", "auto"):
            raise LmforgeError(f"train.dtype={self.dtype!r}: use fp32, bf16, fp16 (with loss "
                               "scaling, for GPUs) or auto (bf16 where the CPU or GPU computes "
                               "it natively, else fp32)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LmforgeError(f"train.device={self.device!r}: use auto, cpu or cuda")
        for name in ("batch_size", "block_size", "grad_accum", "max_steps", "eval_every",
                     "eval_batches", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"train.{name} must be at least 1")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise LmforgeError("train.warmup_steps must be between 0 and train.max_steps")
        if self.threads < 0:
            raise LmforgeError(f"train.threads={self.threads} is invalid: give the number of CPU "
                               "threads (at least 1), or 0 for torch's default")
        if not isinstance(self.trainable, list) or not all(
                isinstance(p, str) and p for p in self.trainable):
            raise LmforgeError(f"train.trainable={self.trainable!r}: a list of parameter name "
                               "patterns, e.g. [\"layers.29.*\", \"norm.*\"]")
        if self.trainable and not self.init_from:
            raise LmforgeError("train.trainable freezes the rest of a trained model: set "
                               "train.init_from to the model to start from (e.g. \"smollm2\")")
        self.validate_objective()

    def validate_objective(self) -> None:
        from lmforge.objectives.denoising import NOISES
        from lmforge.objectives.registry import OBJECTIVES

        if self.objective not in ("", *OBJECTIVES):
            raise LmforgeError(f"train.objective={self.objective!r}: use one of "
                               f"{list(OBJECTIVES)} (\"\" picks the model family's default)")
        for name in ("mask_rate", "noise_density"):
            if not 0 < getattr(self, name) < 1:
                raise LmforgeError(f"train.{name} must be between 0 and 1")
        if self.mean_span < 1:
            raise LmforgeError("train.mean_span must be at least 1")
        bad = [n for n in self.denoising if n not in NOISES]
        if bad or not self.denoising:
            raise LmforgeError(f"train.denoising={self.denoising!r}: a non-empty list of "
                               f"{list(NOISES)}")


@dataclass
class RunConfig:
    model: dict
    data_dir: Path
    train: TrainSettings = field(default_factory=TrainSettings)
    source: Path | None = None

    def to_dict(self) -> dict:
        return {"model": self.model, "data": {"dir": str(self.data_dir)},
                "train": dataclasses.asdict(self.train)}


def apply_override(raw: dict, assignment: str) -> None:
    """`section.key=value` with a TOML value; bare words are taken as strings."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise LmforgeError(f"--set {assignment!r}: write section.key=value, e.g. train.lr=3e-4")
    key, value = assignment.split("=", 1)
    section, name = key.split(".", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    raw.setdefault(section, {})[name] = parsed


def resolve_init_from(spec: str, config_dir: Path) -> str:
    """A built-in name as it is; a path made absolute (relative ones from the config file's
    directory), so that checkpoints that name it as their base load from anywhere."""
    from lmforge.interop.registry import MODELS

    if not spec or spec in MODELS:
        return spec
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else (config_dir / path).absolute())


def read_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """A TOML config file's tables, with the `--set` overrides applied."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise LmforgeError(f"{path} is not valid TOML: {exc}") from None
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return run_config(read_config(path, overrides), Path(path))


def run_config(raw: dict, path: Path) -> RunConfig:
    """The [model], [data] and [train] tables of the config file at `path` (which relative
    paths start from)."""
    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown:
        raise LmforgeError(f"{path}: unknown table(s) {unknown}; use [model], [data], [train]")
    data = raw.get("data", {})
    if set(data) - {"dir"} or "dir" not in data:
        raise LmforgeError(f"{path}: [data] needs exactly one key, dir = \"DATA_DIR\"")
    settings = strict.from_dict(TrainSettings, raw.get("train", {}), "train setting")
    settings.validate()
    out = Path(settings.out_dir)
    settings.out_dir = str(out if out.is_absolute() else path.parent / out)
    settings.init_from = resolve_init_from(settings.init_from, path.parent)
    data_dir = Path(data["dir"])
    return RunConfig(raw.get("model", {}), data_dir if data_dir.is_absolute()
                     else path.parent / data_dir, settings, path)
