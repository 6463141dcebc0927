"""The models trained by `configs/` on the standard tasks, where the task fits the model, next
to their own perplexity on Tiny Shakespeare's validation text.

    python benchmarks/eval_configs.py runs/shakespeare-bpe runs/shakespeare-char \\
        [--tasks hellaswag arc_easy arc_challenge lambada_openai piqa] [--limit 500] \\
        [--threads 1] [--json benchmarks/results/eval_configs.json]

Each run directory (trained by `lmforge train --config configs/NAME.toml`) is loaded once and
scored on each task by `lmforge.eval.tasks.evaluate_tasks` (zero-shot, the first `--limit`
examples, contexts cut on the left to the model's window as the harness cuts them). A task
that cannot run on a model is recorded with the reason instead of a score: a character
tokenizer built from Shakespeare has no digits, and a choice longer than the window cannot
be scored. Perplexity and bits per byte on `tinyshakespeare/val.txt` come from
`lmforge.eval.models.evaluate_model` in windows of the model's own length. Bits per byte
compare across tokenizers; `smollm2` is the reference row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lmforge.api import load
from lmforge.errors import LmforgeError
from lmforge.eval.models import evaluate_model
from lmforge.eval.tasks import evaluate_tasks
from lmforge.hardware import cpu_name
from lmforge.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "val.txt"
TASKS = ["hellaswag", "piqa", "arc_easy", "arc_challenge", "lambada_openai"]


def task_scores(spec: str, tasks: list[str], limit: int) -> dict:
    """{task: its report entry, or {"not_run": reason}} for one model."""
    lm = load(spec)
    out = {}
    for task in tasks:
        try:
            report, _ = evaluate_tasks(lm, [task], limit=limit, progress=False)
            out[task] = report["tasks"][task]
        except LmforgeError as e:
            out[task] = {"not_run": str(e)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories of configs/ recipes")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", default="smollm2", help="a model scored beside them")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/eval_configs.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    text = VAL.read_text(encoding="utf-8")
    models = {}
    for spec in [*args.runs, args.reference]:
        ppl = evaluate_model(spec, text)
        models[spec] = {"shakespeare_val": {k: ppl[k] for k in (
            "ctx", "tokens", "perplexity", "bits_per_byte")}}
        if spec != args.reference:
            models[spec]["tasks"] = task_scores(spec, args.tasks, args.limit)
        print(spec, json.dumps(models[spec])[:400], flush=True)
    record = {"benchmark": "eval_configs", "cpu": cpu_name(), "machine": platform.machine(),
              "threads": args.threads, "torch": torch.__version__, "limit": args.limit,
              "load_before": load_before, "load_after": os.getloadavg(),
              "wall_s": round(time.perf_counter() - t0, 1), "models": models,
              "note": f"{args.reference}'s task scores on the whole sets are in eval_tasks.json"}
    atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
