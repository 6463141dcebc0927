"""Adaptation methods side by side, in the manner of PEFT's method comparison: accuracy,
trainable parameters, wall time, peak memory and training examples seen per method.

    python benchmarks/adapt.py --models minilm --tasks sst2 --steps 4200 --batch 32 \\
        --max-len 64 --probe-steps 3000 --jobs 10 --json benchmarks/results/adapt.json

Grid (`--models`, `--tasks`, `--methods` select from it):
- `minilm`: full (lr 1e-4, layer-wise decay 0.9), probe-cls, probe-mean, prompt tuning with
  each initialisation (prompt-vocab, prompt-labels, prompt-normal), ptuning2 (16 prefix
  positions, no MLP), lora-r8 and lora-r16 (q and v, α = 2r);
- `smollm2`: probe (last token), lora-r8, ptuning2;
on SST-2 (train.tsv → dev.tsv, 872 rows) and ChnSentiCorp (train.csv → test.csv, 776 rows).
Every method trains on the same seeded subset (`--train-subset`, `subset_seed` 0) for
`--steps` steps of `--batch` rows (probes: `--probe-steps` steps on cached features) and is
scored on the whole evaluation set, through `lmforge.adapt.finetune.finetune`.

Each method runs in its own child process, so its peak memory is that process's
`ru_maxrss` (from `os.wait4`), and its wall time includes loading the model; `--jobs N` runs
N at once (each with `--threads` threads). The probe-by-layer curve is
`lmforge.adapt.probe.probe_task` (mean pooling, every layer, the same subset) per model and
task. A method that is not built yet (LoRA before `--method lora` existed) is recorded as not
run with the reason; grid cells outside the selection are listed with the command that runs
them. `--update` keeps the rows of an existing record that this run does not redo; the record
lists every invocation (argv, CPU, GPU if any, load, settings) and each row its own.
Writes the JSON record and a PNG (accuracy per method; accuracy against depth).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lmforge.hardware import cpu_name
from lmforge.io import atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TASKS = {"sst2": ("sst2/train.tsv", "sst2/dev.tsv", "negative,positive"),
         "chnsenticorp": ("chnsenticorp/train.csv", "chnsenticorp/test.csv", "差,好")}
# name → (finetune method, settings beyond the common ones)
METHODS = {
    "full": ("full", {"lr": 1e-4, "min_lr": 1e-5, "layer_decay": 0.9}),
    "probe-cls": ("probe", {"pooling": "cls"}),
    "probe-mean": ("probe", {"pooling": "mean"}),
    "probe": ("probe", {}),
    "prompt-vocab": ("prompt", {"init": "vocab"}),
    "prompt-labels": ("prompt", {"init": "labels"}),
    "prompt-normal": ("prompt", {"init": "normal"}),
    "ptuning2": ("ptuning2", {}),
    "lora-r8": ("lora", {"r": 8, "alpha": 16.0}),
    "lora-r16": ("lora", {"r": 16, "alpha": 32.0}),
}
GRID = {"minilm": ["full", "probe-cls", "probe-mean", "prompt-vocab", "prompt-labels",
                   "prompt-normal", "ptuning2", "lora-r8", "lora-r16"],
        "smollm2": ["probe", "lora-r8", "ptuning2"]}
# published figures the table is read against (accuracy %)
ANCHORS = {
    "sst2": ["MiniLM-L6-H384 fully fine-tuned: 91.5 (SST-2 dev)",
             "DistilBERT fully fine-tuned: 91.3 (SST-2 dev)",
             "frozen sentence encoder + logistic regression: 84-89 (SBERT paper, Table 5)",
             "LoRA matches full fine-tuning on RoBERTa (LoRA paper, Table 2)"],
    "chnsenticorp": ["BERT-base-chinese fully fine-tuned: 95.0 (ChnSentiCorp test)"],
}
LAYERS = "probe-by-layer"  # the per-layer probe curve, a row of its own
TARGETS = ("full >= 90%", "probe-mean >= 82%",
           "LoRA within 1 point of full with < 2% trainable", "P-Tuning v2 above prompt tuning")


def settings_for(name: str, model: str, task: str, args: argparse.Namespace, out: Path
                 ) -> tuple[str, dict]:
    """The finetune method and its full settings for one row."""
    method, extra = METHODS[name]
    train, dev, words = TASKS[task]
    s = {"eval_data": str(DATA / dev), "train_subset": args.train_subset, "subset_seed": 0,
         "max_len": args.max_len, "threads": args.threads, "eval_every": 100_000,
         "log_every": 10, "out_dir": str(out), "seed": 0, **extra}
    if method == "probe":
        s.update(max_steps=args.probe_steps, batch_size=64, cache_dir=str(args.cache_dir))
    else:
        s.update(max_steps=args.steps, batch_size=args.batch,
                 warmup_steps=max(1, args.steps // 10))
    if name == "prompt-labels":
        s["label_words"] = words
    return method, s


def run_one(spec: dict) -> None:
    """The child process: one finetune (or probe-by-layer) run; its row as JSON to a file."""
    from lmforge.adapt.finetune import finetune

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    if spec["kind"] == "layers":
        from lmforge.adapt.probe import probe_task

        run = probe_task(spec["model"], spec["train"], "all", spec["out"], pooling="mean",
                         eval_data=spec["eval"], train_subset=spec["train_subset"],
                         max_len=spec["max_len"], cache_dir=spec["cache_dir"], progress=False)
        row = {"n_train": run.n_train, "n_eval": run.n_eval, "majority": run.chance,
               "layers": [{"layer": r.layer, "train_acc": r.train_acc, "eval_acc": r.eval_acc}
                          for r in run.results]}
    else:
        r = finetune(spec["model"], spec["method"], "seqcls", spec["train"], spec["settings"],
                     progress=False)
        steps = json.loads((r.run_dir / "results.json").read_text())["steps"]
        row = {"eval_acc": r.eval_acc, "eval_n": r.eval_n, "trainable": r.trainable,
               "total": r.total, "trainable_pct": 100 * r.trainable / r.total, "steps": steps,
               "examples_seen": steps * spec["settings"]["batch_size"]}
    row["run_s"] = time.perf_counter() - t0
    if torch.cuda.is_available():
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    atomic_write_text(spec["row_out"], json.dumps(row) + "\n")


def child(spec: dict, out: Path) -> dict:
    """Run `spec` in a child process; its row plus wall time and the child's peak RSS."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "row_out": str(out / "row.json")}
    log = open(out / "child.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--run-one", json.dumps(spec)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    log.close()
    base = {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    if proc.returncode:
        tail = (out / "child.log").read_text().strip().splitlines()[-3:]
        return {**base, "status": f"failed (exit {proc.returncode}): {' | '.join(tail)}"}
    return {**base, "status": "ok", **json.loads((out / "row.json").read_text())}


def lora_built() -> bool:
    from lmforge.adapt import settings

    return "lora" in settings.METHODS


def plan(args: argparse.Namespace) -> tuple[list[tuple[dict, dict, Path]], list[dict]]:
    """(jobs to run: (row keys, spec, run dir)), rows recorded without running."""
    jobs, skipped = [], []
    for model in args.models:
        for task in args.tasks:
            train, dev, _ = TASKS[task]
            for name in GRID[model]:
                if args.methods and name not in args.methods:
                    continue
                key = {"model": model, "task": task, "method": name}
                out = args.runs / f"{model}-{task}-{name}"
                method, s = settings_for(name, model, task, args, out)
                if method == "lora" and not lora_built():
                    skipped.append({**key, "status": "not run: not built at the time"})
                    continue
                spec = {"kind": "finetune", "model": model, "method": method,
                        "train": str(DATA / train), "settings": s, "threads": args.threads}
                jobs.append(({**key, "settings": s}, spec, out))
            if not args.no_layers and (not args.methods or LAYERS in args.methods):
                spec = {"kind": "layers", "model": model, "train": str(DATA / train),
                        "eval": str(DATA / dev), "train_subset": args.train_subset,
                        "max_len": args.max_len, "cache_dir": str(args.cache_dir),
                        "threads": args.threads, "out": str(args.runs / f"{model}-{task}-layers")}
                out = Path(spec["out"])
                jobs.append(({"model": model, "task": task, "method": LAYERS},
                             spec, out))
    return jobs, skipped


def not_selected(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """Grid cells without a measured row, each with the command that runs them."""
    measured = {(r["model"], r["task"], r["method"]) for r in rows if r.get("status") == "ok"}
    flags = (f"--threads {args.threads} --train-subset {args.train_subset} --steps "
             f"{args.steps} --probe-steps {args.probe_steps} --batch {args.batch} "
             f"--max-len {args.max_len} --update")
    out = []
    for model, names in GRID.items():
        for task in TASKS:
            left = [n for n in [*names, LAYERS] if (model, task, n) not in measured]
            if left:
                out.append({"model": model, "task": task, "methods": left,
                            "command": f"python benchmarks/adapt.py --models {model} --tasks "
                                       f"{task} --methods {' '.join(left)} {flags}"})
    return out


def cell_targets(acc: dict[str, float], pct: dict[str, float]) -> list[tuple[str, bool, str]]:
    """(target, met, detail) for one model and task, from accuracy % and trainable % per
    method; a target whose rows are missing is left out."""
    out = []
    if "full" in acc:
        out.append((TARGETS[0], acc["full"] >= 90, f"full {acc['full']:.1f}%"))
    if "probe-mean" in acc:
        out.append((TARGETS[1], acc["probe-mean"] >= 82, f"probe-mean {acc['probe-mean']:.1f}%"))
    for lora in ("lora-r8", "lora-r16"):
        if lora in acc and "full" in acc:
            out.append((TARGETS[2], acc[lora] >= acc["full"] - 1 and pct[lora] < 2,
                        f"{lora} {acc[lora]:.1f}% vs full {acc['full']:.1f}%, "
                        f"{pct[lora]:.2f}% trainable"))
    prompts = {m: a for m, a in acc.items() if m.startswith("prompt-")}
    if "ptuning2" in acc and prompts:
        best = max(prompts, key=prompts.get)
        out.append((TARGETS[3], acc["ptuning2"] > prompts[best],
                    f"ptuning2 {acc['ptuning2']:.1f}% vs best prompt ({best}) "
                    f"{prompts[best]:.1f}%"))
    return out


def check_targets(rows: list[dict]) -> list[dict]:
    """Each target of issue #19 per (model, task) where its rows were run: met or not."""
    out = []
    for model, task in sorted({(r["model"], r["task"]) for r in rows}):
        ok = [r for r in rows if r["model"] == model and r["task"] == task
              and r.get("status") == "ok" and "eval_acc" in r]
        acc = {r["method"]: 100 * r["eval_acc"] for r in ok}
        pct = {r["method"]: r["trainable_pct"] for r in ok}
        out += [{"model": model, "task": task, "target": t, "met": met, "detail": d}
                for t, met, d in cell_targets(acc, pct)]
    return out


def table(rows: list[dict]) -> str:
    """The Markdown table of the method rows."""
    lines = ["| model | task | method | accuracy | trainable | % of total | steps | "
             "examples seen | wall | peak RSS |", "|" + "---|" * 10]
    for r in rows:
        if r["method"] == LAYERS:
            continue
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {r['task']} | {r['method']} | "
                         f"{r.get('status')} |||||||")
            continue
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | "
                     f"{100 * r['eval_acc']:.1f}% | {r['trainable']:,} | "
                     f"{r['trainable_pct']:.3g}% | {r['steps']} | {r['examples_seen']:,} | "
                     f"{r['wall_s']:.0f} s | {r['peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Left: accuracy per method (one group per model and task); right: probe accuracy
    against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    bars = [r for r in ok if r["method"] != LAYERS]
    curves = [r for r in ok if r["method"] == LAYERS]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8),
                                      gridspec_kw={"width_ratios": [1.6, 1]})
    labels = [f"{r['model']}/{r['task']}\n{r['method']}" for r in bars]
    acc = [100 * r["eval_acc"] for r in bars]
    left.bar(range(len(bars)), acc, color="tab:blue")
    for i, r in enumerate(bars):
        left.text(i, acc[i] + 0.5, f"{acc[i]:.1f}\n{r['trainable_pct']:.3g}%",
                  ha="center", va="bottom", fontsize=7)
    left.set_xticks(range(len(bars)), labels, rotation=60, ha="right", fontsize=7)
    left.set_ylabel("accuracy (%) [label: trainable %]")
    left.set_ylim(40, 100)
    left.axhline(90, ls="--", c="grey", lw=1, label="target for full (90%)")
    left.legend(fontsize=7, loc="lower right")
    left.grid(axis="y", alpha=0.3)
    for r in curves:
        xs = [p["layer"] for p in r["layers"]]
        right.plot(xs, [100 * p["eval_acc"] for p in r["layers"]], marker="o",
                   label=f"{r['model']}/{r['task']} (mean pooling)")
    right.set_xlabel("layer (0: embeddings)")
    right.set_ylabel("linear-probe accuracy (%)")
    right.grid(alpha=0.3)
    if curves:
        right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def invocation(args: argparse.Namespace, load_before: tuple, load_after: tuple,
               wall: float) -> dict:
    """One run of this script: its machine, load and settings (rows point to it by index,
    so a record merged from several runs with --update keeps each row's conditions)."""
    return {"argv": sys.argv[1:], "cpu": cpu_name(), "machine": platform.machine(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "threads": args.threads, "jobs": args.jobs,
            "load_before": load_before, "load_after": load_after, "total_wall_s": round(wall, 1),
            "train_subset": args.train_subset or "all", "subset_seed": 0, "steps": args.steps,
            "probe_steps": args.probe_steps, "batch": args.batch, "max_len": args.max_len,
            "note": args.note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=[], choices=[*METHODS, LAYERS],
                        help="a subset of the grid's methods and the layer curve "
                             "(default: all of each model's)")
    parser.add_argument("--train-subset", type=int, default=0,
                        help="training rows drawn with subset_seed 0 (0: the whole set)")
    parser.add_argument("--steps", type=int, default=2100, help="steps of the trained methods")
    parser.add_argument("--probe-steps", type=int, default=1000,
                        help="steps of the probes' heads on cached features (batch 64)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--jobs", type=int, default=1, help="children run at once")
    parser.add_argument("--no-layers", action="store_true", help="skip the probe-by-layer curve")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-adapt")
    parser.add_argument("--cache-dir", type=Path,
                        default=ROOT / "runs" / "bench-adapt" / "features")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/adapt.json")
    parser.add_argument("--png", type=Path, default=None, help="default: the JSON's name, .png")
    parser.add_argument("--update", action="store_true",
                        help="keep the existing record's rows that this run does not redo")
    parser.add_argument("--note", default="", help="a remark stored in the record")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(json.loads(args.run_one))
        return
    jobs, rows = plan(args)
    load_before = os.getloadavg()
    t0 = time.perf_counter()

    def go(job: tuple[dict, dict, Path]) -> dict:
        key, spec, out = job
        row = {**key, **child(spec, out)}
        print(json.dumps({k: v for k, v in row.items() if k not in ("settings", "layers")}),
              flush=True)
        return row
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows += list(pool.map(go, jobs))
    load_after = os.getloadavg()
    done = {(r["model"], r["task"], r["method"]) for r in rows}
    invocations = []
    if args.update and args.json.exists():
        old = json.loads(args.json.read_text())
        rows = [r for r in old["rows"] if (r["model"], r["task"], r["method"]) not in done] + rows
        invocations = old.get("invocations", [])
    this = invocation(args, load_before, load_after, time.perf_counter() - t0)
    for r in rows:
        if (r["model"], r["task"], r["method"]) in done:
            r["invocation"] = len(invocations)
    record = {"benchmark": "adapt", "anchors": ANCHORS, "targets": check_targets(rows),
              "invocations": [*invocations, this], "rows": rows,
              "not_run": not_selected(args, rows)}
    atomic_write_text(args.json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    png = args.png or args.json.with_suffix(".png")
    plot(rows, png, f"lmforge adaptation methods on {this['device']}: last run subset "
         f"{this['train_subset']}, {args.steps} steps of {args.batch}, max_len {args.max_len}, "
         f"load {load_before[0]:.1f}→{load_after[0]:.1f}")
    print(table(rows))
    for task, anchors in ANCHORS.items():
        print(f"anchors ({task}): " + "; ".join(anchors))
    for t in record["targets"]:
        verdict = "met" if t["met"] else "NOT met"
        print(f"target [{t['model']}/{t['task']}] {t['target']}: {verdict} ({t['detail']})")
    for cell in record["not_run"]:
        print(f"not run: {cell['command']}")
    print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
