"""The settings of `lmforge finetune`: `--set key=value` names a fine-tuning setting below or
a trainer setting (`train/config.py: TrainSettings`, optionally as `train.key`), parsed as
TOML (bare words are strings). Each method starts from its own trainer defaults.

    setting            default    meaning
    eval_data          ""         a labelled file scored during and after training
    text_column        ""         "": the first of sentence, review, text the file has
    label_column       "label"
    pooling            ""         cls | mean | last; "": mean (encoders), last (decoders)
    head_hidden        0          0: a linear head; else one tanh hidden layer this wide
    dropout            0.0        before the head (and its hidden layer)
    max_len            128        tokens per text (longer ones are cut)
    train_subset       0          train on this many examples drawn with subset_seed (0: all)
    eval_subset        0          likewise for eval_data
    subset_seed        0
    layer_decay        1.0        full: lr of block i of n is lr·decay^(n−i) (1: off)
    freeze_embeddings  false      full: token, position and segment embeddings stay fixed
    layer              -1         probe: the layer whose features are read (-1: the last)
    cache_dir          "~/.cache/lmforge/features"   probe: the feature cache
    feature_batch      64         probe: rows per forward pass while extracting features
    n_virtual          20         prompt: virtual tokens in front of the input
    init               "vocab"    prompt: vocab | labels | normal (adapt/prompt_tuning.py)
    label_words        ""         prompt, init=labels: one word per class, comma-separated,
                                  in label order ("": the label names)
    n_prefix           16         ptuning2: prefix positions per layer
    reparam            0          ptuning2: hidden width of the reparameterisation MLP (0: off)
    prefix_std         1.0        ptuning2: the prefix's initial N(0, std²) (no MLP)
    r                  8          lora: rank
    alpha              16.0       lora: the update is scaled by alpha/r
    targets            "q_proj,v_proj"  lora: comma-separated patterns (adapt/lora.py)
    lora_dropout       0.0        lora: dropout on the LoRA branch's input
    packing            false      sft: conversations packed into max_len windows
                                  (adapt/sft_batches.py); false: one per row, padded
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field

from lmforge import strict
from lmforge.errors import LmforgeError
from lmforge.train.config import TrainSettings

METHODS = ("full", "probe", "prompt", "ptuning2", "lora")
TASKS = {"seqcls": METHODS, "sft": ("full", "lora")}
# trainer settings that fine-tuning sets itself or that do not apply to it
NOT_HERE = {"init_from": "the model is --model", "trainable": "the method decides it",
            "objective": "the task decides it", "block_size": "set max_len instead",
            "nsp": "", "mask_rate": "", "noise_density": "", "mean_span": "", "denoising": "",
            "fsdp": "fine-tuning runs in one process"}
# what every method shares; each method's entry below overrides part of it
_COMMON = {"batch_size": 32, "max_steps": 500, "weight_decay": 0.0, "beta2": 0.999,
           "eval_every": 100, "eval_batches": 10, "log_every": 10, "keep_last": 1}
DEFAULTS = {
    "full": {**_COMMON, "lr": 5e-5, "min_lr": 5e-6, "warmup_steps": 50, "weight_decay": 0.01},
    # a soft prompt or prefix and the head: a much larger learning rate (Lester et al.,
    # 2021, used 0.3; Liu et al., 2022, 5e-3 to 1e-2)
    "prompt": {**_COMMON, "lr": 3e-2, "min_lr": 3e-3, "warmup_steps": 30},
    "ptuning2": {**_COMMON, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 30},
    # LoRA's B starts at zero: larger steps than full fine-tuning (Hu et al., 2021: 2e-4 to
    # 5e-4 on RoBERTa; the classification head trains at the same rate)
    "lora": {**_COMMON, "lr": 5e-4, "min_lr": 5e-5, "warmup_steps": 30},
    "probe": {**_COMMON, "batch_size": 64, "max_steps": 1000, "lr": 1e-3, "min_lr": 1e-4,
              "warmup_steps": 0, "eval_every": 250, "log_every": 50},
}


@dataclass
class FinetuneSettings:
    eval_data: str = ""
    text_column: str = ""
    label_column: str = "label"
    pooling: str = ""
    head_hidden: int = 0
    dropout: float = 0.0
    max_len: int = 128
    train_subset: int = 0
    eval_subset: int = 0
    subset_seed: int = 0
    layer_decay: float = 1.0
    freeze_embeddings: bool = False
    layer: int = -1
    cache_dir: str = "~/.cache/lmforge/features"
    feature_batch: int = 64
    n_virtual: int = 20
    init: str = "vocab"
    label_words: str = ""
    n_prefix: int = 16
    reparam: int = 0
    prefix_std: float = 1.0
    r: int = 8
    alpha: float = 16.0
    targets: str = "q_proj,v_proj"
    lora_dropout: float = 0.0
    packing: bool = False
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        if not 0 < self.layer_decay <= 1:
            raise LmforgeError(f"layer_decay={self.layer_decay}: a factor in (0, 1] (1: off)")
        for name in ("dropout", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise LmforgeError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        for name in ("max_len", "feature_batch"):
            if getattr(self, name) < 2:
                raise LmforgeError(f"{name} must be at least 2")
        if self.head_hidden < 0 or self.layer < -1:
            raise LmforgeError("head_hidden must be ≥ 0 and layer ≥ -1")
        self.train.block_size = self.max_len  # what the trainer's tokens/s counts per row
        self.train.validate()


def value(text: object) -> object:
    """A --set value as TOML (numbers, booleans, quoted strings); bare words as strings."""
    if not isinstance(text, str):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def check_types(defaults: object, values: dict[str, object]) -> None:
    """Each value of the type of its default (an integer where a float is expected too)."""
    for key, v in values.items():
        want = type(getattr(defaults, key))
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool)) or \
            (want is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            raise LmforgeError(f"--set {key}={v!r}: expected {want.__name__}")


def parse(method: str, settings: dict[str, object]) -> FinetuneSettings:
    """FinetuneSettings from {key: value} over `method`'s trainer defaults; unknown keys and
    trainer settings that fine-tuning owns are errors that name them."""
    own = {f.name for f in dataclasses.fields(FinetuneSettings)} - {"train"}
    trainer = {f.name for f in dataclasses.fields(TrainSettings)}
    mine, train = {}, dict(DEFAULTS[method])
    for key, raw in settings.items():
        name = key.removeprefix("train.")
        if name in NOT_HERE:
            why = NOT_HERE[name] or "it belongs to pre-training objectives"
            raise LmforgeError(f"--set {key}: not a fine-tuning setting ({why})")
        if key in own:
            mine[key] = value(raw)
        elif name in trainer:
            train[name] = value(raw)
        else:
            raise LmforgeError(f"--set {key}: unknown setting; fine-tuning settings are "
                               f"{sorted(own)}, trainer settings {sorted(trainer - set(NOT_HERE))}")
    check_types(FinetuneSettings(), mine)
    check_types(TrainSettings(), train)
    s = strict.from_dict(FinetuneSettings, mine, "fine-tuning setting")
    s.train = strict.from_dict(TrainSettings, train, "train setting")
    s.validate()
    return s


def to_dict(s: FinetuneSettings) -> dict:
    return dataclasses.asdict(s)
