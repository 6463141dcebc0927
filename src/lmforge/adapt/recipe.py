"""Fine-tuning recipes: a TOML file that is one `lmforge finetune` command.

    # configs/smollm2-sft-lora.toml
    [finetune]
    model = "smollm2"              # --model (a path is relative to this file)
    method = "lora"                # --method
    task = "sft"                   # --task
    data = "../../shared/data/self-instruct/seed_tasks.jsonl"   # --data (relative to this file)
    [settings]                     # each --set key=value (adapt/settings.py)
    r = 8
    max_steps = 60
    out_dir = "../runs/smollm2-sft-lora"                        # --out (relative to this file)

Run by `lmforge train --config FILE` (a config with a [finetune] table is a recipe) or
`lmforge finetune --config FILE`. Overrides: `--set key=value` (a setting; `train.key` too)
or `--set finetune.model=…` (the [finetune] table).
"""

from __future__ import annotations

from pathlib import Path

from lmforge.adapt import finetune as ft
from lmforge.errors import LmforgeError
from lmforge.train.config import read_config, resolve_init_from

TABLE = ("model", "method", "task", "data")
PATHS = ("eval_data", "out_dir", "cache_dir")  # settings that name files: relative to the TOML


def is_recipe(path: str | Path) -> bool:
    """Whether a config file is a fine-tuning recipe (has a [finetune] table)."""
    return Path(path).is_file() and "finetune" in read_config(path)


def _relative(value: str, root: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() or value.startswith("~") else (root / p).absolute())


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[dict, dict]:
    """({model, method, task, data}, settings) of a recipe, paths resolved against its
    directory, `overrides` ("key=value" or "finetune.key=value") applied."""
    p = Path(path)
    raw = read_config(p)
    unknown = sorted(set(raw) - {"finetune", "settings"})
    if unknown:
        raise LmforgeError(f"{p}: unknown table(s) {unknown}; a recipe has [finetune] and "
                           "[settings]")
    head, settings = dict(raw.get("finetune", {})), dict(raw.get("settings", {}))
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise LmforgeError(f"--set {item!r}: write key=value, e.g. --set lr=3e-5")
        key, value = key.strip(), value.strip()
        if key.startswith("finetune."):
            head[key.removeprefix("finetune.")] = value
        else:
            settings[key] = value
    bad = sorted(set(head) - set(TABLE))
    missing = [k for k in TABLE if k not in head]
    if bad or missing:
        raise LmforgeError(f"{p}: [finetune] takes exactly {', '.join(TABLE)}"
                           + (f"; unknown {bad}" if bad else f"; missing {missing}"))
    root = p.parent
    head["model"] = resolve_init_from(str(head["model"]), root)
    head["data"] = _relative(str(head["data"]), root)
    for key in PATHS:
        if isinstance(settings.get(key), str) and settings[key]:
            settings[key] = _relative(settings[key], root)
    return head, settings


def run_recipe(path: str | Path, overrides: list[str] = (), resume: bool = False,
               stop_after: int | None = None, progress: bool = True) -> ft.Result:
    """Run the `lmforge finetune` command a recipe describes."""
    head, settings = load_recipe(path, overrides)
    return ft.finetune(head["model"], head["method"], head["task"], head["data"], settings,
                       resume=resume, stop_after=stop_after, progress=progress)
