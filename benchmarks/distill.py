"""Knowledge distillation at equal steps: the student of configs/distill-smollm2-student.toml
trained on SmolLM2-135M's top-32 distribution (α = 0.5, T = 1) against the same student
trained without a teacher (α = 0: the same seed, batches and steps), scored by validation
perplexity (`lmforge.eval.perplexity`) next to the teacher's.

    .venv/bin/python benchmarks/distill.py                 # about 25 minutes on 2 cores
    .venv/bin/python benchmarks/distill.py --temperature 2 --out benchmarks/results/distill_t2.json
    .venv/bin/python benchmarks/distill.py --steps 40 --chunks 64 --eval-tokens 1024  # smoke

Writes benchmarks/results/distill.json: the CPU, threads, settings, steps, wall times (the
teacher's cache fill apart), validation perplexity of both students and the teacher on the
first --eval-tokens tokens of Tiny Shakespeare's validation split in windows of the
student's context (64 tokens), and the last in-training val_ce / val_kl of each run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmforge.adapt.distill import distill, load_config, load_teacher
from lmforge.api import load
from lmforge.data.prepare import load_tokens, prepare
from lmforge.eval.perplexity import evaluate
from lmforge.io import atomic_write_text
from lmforge.train.setup import load_data

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare"
CONFIG = ROOT / "configs" / "distill-smollm2-student.toml"


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines()
             if line.startswith("Model name")]
    return names[0] if names else platform.processor()


def perplexity(model: torch.nn.Module, ids: list[int], n_bytes: int, ctx: int) -> dict:
    t0 = time.perf_counter()
    r = evaluate(model, ids, n_bytes, ctx=ctx)
    return {"perplexity": r.perplexity, "cross_entropy": r.cross_entropy,
            "bits_per_byte": r.bits_per_byte, "scored_tokens": r.scored,
            "seconds": time.perf_counter() - t0}


def last_eval(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = [r for r in rows if "val_loss" in r][-1]
    return {k: row[k] for k in ("step", "val_loss", "val_ce", "val_kl")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/lmforge-distill/shakespeare-smollm2",
                   help="Tiny Shakespeare prepared with smollm2's tokenizer (made if absent)")
    p.add_argument("--work", default="/tmp/lmforge-distill", help="runs and the teacher cache")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--chunks", type=int, default=384, help="chunks of 65 tokens per split")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--temperature", type=float, default=None, help="default: the config's")
    p.add_argument("--alpha", type=float, default=None, help="default: the config's")
    p.add_argument("--baseline", default="",
                   help="a record of this script with the same settings: take its alone run "
                        "(α = 0 does not depend on T or α) instead of training it again")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data, work = Path(a.data), Path(a.work)
    if not (data / "meta.json").is_file():
        prepare("smollm2", [str(TEXT / "train.txt")], data, val=str(TEXT / "val.txt"))
    work.mkdir(parents=True, exist_ok=True)
    common = [f"data.dir='{data}'", f"train.max_steps={a.steps}",
              f"train.eval_every={max(1, a.steps // 2)}", f"train.threads={a.threads}",
              f"train.warmup_steps={min(20, a.steps // 10)}",
              f"distill.chunks={a.chunks}", f"distill.cache_dir='{work / 'cache'}'"]
    common += [f"distill.{k}={v}" for k, v in (("temperature", a.temperature),
                                                ("alpha", a.alpha)) if v is not None]

    run, s = load_config(CONFIG, common)  # fill the teacher's cache first, timed apart
    t0 = time.perf_counter()
    teacher = load_teacher(run, s)
    splits = load_data(data)
    for tokens in (splits.train, splits.val):
        teacher.sampler(tokens, run.train.block_size)
    cache_s = time.perf_counter() - t0
    del teacher

    runs, baseline = {}, json.loads(Path(a.baseline).read_text()) if a.baseline else None
    for name, alpha in (("distilled", s.alpha), ("alone", 0.0)):
        if name == "alone" and baseline is not None:
            runs[name] = {**baseline["runs"]["alone"], "from": a.baseline}
            continue
        shutil.rmtree(work / name, ignore_errors=True)  # a fresh run, not a continuation
        over = [*common, f"train.out_dir='{work / name}'", f"distill.alpha={alpha}"]
        t0 = time.perf_counter()
        run_dir = distill(*load_config(CONFIG, over))
        runs[name] = {"alpha": alpha, "run_dir": str(run_dir),
                      "wall_s": time.perf_counter() - t0, "last_eval": last_eval(run_dir)}

    ctx = run.train.block_size
    ids = [int(x) for x in load_tokens(data, "val")[: a.eval_tokens]]
    tokenizer = load(str(work / "distilled")).tokenizer
    n_bytes = len(tokenizer.decode(ids).encode("utf-8"))
    for name in runs:
        if "val" in runs[name]:  # the baseline's, scored on the same tokens
            continue
        student = load(str(work / name))
        runs[name]["parameters"] = sum(p.numel() for p in student.model.parameters())
        runs[name]["val"] = perplexity(student.model, ids, n_bytes, ctx)
    teacher_model = load(s.teacher).model
    teacher_val = perplexity(teacher_model, ids, n_bytes, ctx)

    record = {
        "benchmark": "distill", "cpu": cpu_name(), "threads": a.threads,
        "torch": torch.__version__, "python": sys.version.split()[0],
        "data": {"dir": str(data), "chunks_per_split": a.chunks, "block_size": ctx,
                 "eval_tokens": len(ids), "eval_bytes": n_bytes, "eval_ctx": ctx},
        "student": run.model, "train": {k: getattr(run.train, k) for k in (
            "batch_size", "block_size", "max_steps", "lr", "min_lr", "warmup_steps",
            "weight_decay", "dtype", "seed")},
        "distill": {k: getattr(s, k) for k in ("teacher", "temperature", "alpha", "top_k",
                                                "teacher_logits", "teacher_dtype")},
        "steps": a.steps, "teacher_cache_s": cache_s, "runs": runs,
        "teacher": {"spec": s.teacher, "parameters": sum(
            p.numel() for p in teacher_model.parameters()), "val": teacher_val},
        "distilled_beats_alone": runs["distilled"]["val"]["perplexity"]
        < runs["alone"]["val"]["perplexity"],
    }
    if baseline is not None:
        same = ("data", "student", "train", "steps")
        if any(baseline[k] != record[k] for k in same):
            sys.exit(f"--baseline {a.baseline} has other {', '.join(same)}; run both arms")
    atomic_write_text(a.out, json.dumps(record, indent=2) + "\n")
    for name, r in runs.items():
        print(f"{name:>9}: val perplexity {r['val']['perplexity']:.2f} "
              f"({r['wall_s']:.0f} s for {a.steps} steps)")
    print(f"  teacher: val perplexity {teacher_val['perplexity']:.2f}; wrote {a.out}")


if __name__ == "__main__":
    main()
