"""SmolLM2 before and after instruction SFT on the Self-Instruct seed tasks, LoRA and full.

    python benchmarks/sft.py --threads 2 --steps 40 --json benchmarks/results/sft.json

Runs the two recipes (`configs/smollm2-sft-lora.toml`, `configs/smollm2-sft-full.toml`,
each with `--steps` steps; the rest as the recipe says) through `adapt.recipe.run_recipe`,
then for the base and each tuned model:
- the held-out loss on assistant tokens (`adapt.sft.heldout_loss`: mean cross-entropy over
  every assistant token, the end-of-turn token included) of `--heldout` conversations drawn
  from `user_oriented_instructions.jsonl` with the recipes' eval_subset seed: the same
  conversations the runs score as eval_loss;
- greedy answers (≤ `--max-tokens` new tokens, the chat template with SmolLM2's default
  system prompt) to `--answers` held-out instructions without an input field, in file order.
The JSON record holds the CPU, threads, steps, wall time of each run, trainable parameters,
losses and answers; `--markdown` prints the README table of an existing record (no run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lmforge.adapt.recipe import load_recipe, run_recipe
from lmforge.adapt.sft import encode_all, heldout_loss, read_conversations
from lmforge.adapt.sft_run import subset
from lmforge.api import load
from lmforge.generate.config import GenerationConfig
from lmforge.io import atomic_write_text
from lmforge.tokenizers.chat import encode_chat

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"lora": ROOT / "configs" / "smollm2-sft-lora.toml",
           "full": ROOT / "configs" / "smollm2-sft-full.toml"}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def answer_prompts(n: int) -> list[str]:
    """The first `n` held-out instructions that need no input (short, self-contained)."""
    rows = [json.loads(line) for line in (ROOT / "../shared/data/self-instruct/"
                                          "user_oriented_instructions.jsonl").read_text(
                                              encoding="utf-8").splitlines() if line.strip()]
    plain = [r["instruction"].strip() for r in rows
             if not any(i.get("input", "").strip() for i in r["instances"])]
    return plain[:n]


def assess(spec: str, adapter: str | None, held: list, prompts: list[str], max_tokens: int
           ) -> dict:
    lm = load(spec, adapter=adapter)
    examples = encode_all(lm.tokenizer, held, 256)
    t = time.perf_counter()
    loss, n = heldout_loss(lm.model, examples)
    config = GenerationConfig(max_tokens=max_tokens, temperature=0.0)
    ids = [encode_chat(lm.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    answers = [c.text for c in (lm.engine.generate([i], config)[0] for i in ids)]
    return {"heldout_loss": loss, "heldout_tokens": n, "answers": answers,
            "assess_s": time.perf_counter() - t}


def markdown(record: dict) -> str:
    """The before/after table: held-out loss, training cost, then each answer."""
    models = record["models"]
    names = list(models)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             "| held-out loss (assistant tokens) | "
             + " | ".join(f"{m['heldout_loss']:.3f}" for m in models.values()) + " |",
             "| trainable parameters | " + " | ".join(
                 f"{m['trainable_params']:,}" if "trainable_params" in m else "–"
                 for m in models.values()) + " |",
             "| training wall time | " + " | ".join(
                 f"{m['train_wall_s'] / 60:.1f} min" if "train_wall_s" in m else "–"
                 for m in models.values()) + " |"]
    for i, prompt in enumerate(record["prompts"]):
        cells = [m["answers"][i].replace("\n", " ").replace("|", "\\|") for m in models.values()]
        lines.append(f"| *{prompt}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--heldout", type=int, default=50)
    ap.add_argument("--answers", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=["lora", "full"])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "sft-bench"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "sft.json"))
    ap.add_argument("--markdown", action="store_true", help="print the table of --json")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text(encoding="utf-8"))))
        return
    torch.set_num_threads(args.threads)
    head, settings = load_recipe(RECIPES["lora"])
    held = subset(read_conversations(settings["eval_data"]), args.heldout,
                  int(settings.get("subset_seed", 0)))
    prompts = answer_prompts(args.answers)
    record = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
              "load_average": os.getloadavg()[0], "steps": args.steps,
              "data": "self-instruct/seed_tasks.jsonl",
              "heldout": f"{len(held)} conversations of user_oriented_instructions.jsonl "
                         f"(eval_subset seed {settings.get('subset_seed', 0)})",
              "prompts": prompts, "max_new_tokens": args.max_tokens, "models": {}}
    record["models"]["base"] = assess(head["model"], None, held, prompts, args.max_tokens)
    print("base", record["models"]["base"]["heldout_loss"], flush=True)
    for method in args.methods:
        out = Path(args.runs) / method
        t = time.perf_counter()
        result = run_recipe(RECIPES[method], [f"max_steps={args.steps}",
                                              f"out_dir={out}", f"threads={args.threads}",
                                              f"eval_subset={args.heldout}"], progress=False)
        wall = time.perf_counter() - t
        spec, adapter = (head["model"], str(out / "adapter")) if method == "lora" \
            else (str(out / "model"), None)
        row = assess(spec, adapter, held, prompts, args.max_tokens)
        _, s = load_recipe(RECIPES[method])
        row.update({"train_wall_s": wall, "trainable_params": result.trainable,
                    "total_params": result.total, "run_eval_loss": result.eval_loss,
                    "settings": {k: s[k] for k in ("batch_size", "lr", "max_len", "r",
                                                   "alpha", "targets", "lora_dropout")
                                 if k in s}})
        record["models"][method] = row
        print(method, row["heldout_loss"], f"{wall:.0f} s", flush=True)
        atomic_write_text(Path(args.json), json.dumps(record, indent=2) + "\n")
    atomic_write_text(Path(args.json), json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
