"""`lmforge finetune` and `lmforge probe`: adapting a model to a labelled task from the shell.

    lmforge finetune --model minilm --method full --task seqcls \\
        --data ../shared/data/sst2/train.tsv --eval-data ../shared/data/sst2/dev.tsv \\
        --set max_steps=300 --set layer_decay=0.9 --out runs/sst2-full
    lmforge probe --model minilm --task sst2 --layers all --pooling mean \\
        --train-subset 8000 --out runs/sst2-probe

Only argparse is imported here; the training modules load inside the commands.
"""

from __future__ import annotations

import argparse

from lmforge.errors import LmforgeError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `finetune` and `probe` to the `lmforge` subcommands."""
    f = sub.add_parser(
        "finetune", help="adapt a model to a task: full, probe, prompt, ptuning2, lora",
        description="Trains with the trainer of `lmforge train` (checkpoints, --resume, "
                    "metrics.jsonl, loss.png) and writes OUT/results.json, OUT/adapter/ (the "
                    "head) and, for full, OUT/model/. Settings: docs/adaptation.md.")
    f.add_argument("--model", help="a built-in name, .gguf, or model directory")
    f.add_argument("--method", help="full, probe, prompt, ptuning2, lora (sft: full or lora)")
    f.add_argument("--task", default="seqcls",
                   help="seqcls: sequence classification; sft: instruction SFT on "
                        "conversations (JSONL of messages or Self-Instruct tasks)")
    f.add_argument("--data", help="training file: .tsv, .csv or .jsonl")
    f.add_argument("--config", default=None, help="a recipe TOML (configs/smollm2-sft-lora.toml; "
                   "also run by `lmforge train --config`)")
    f.add_argument("--eval-data", default=None, help="a labelled file scored during and "
                                                    "after training")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fine-tuning or trainer setting, e.g. lr=3e-5, layer_decay=0.9")
    f.add_argument("--out", help="the run directory")
    f.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    f.add_argument("--stop-after", type=int, default=None, help="pause after this step")
    f.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "probe", help="linear probes on every layer of a frozen model: accuracy by depth",
        description="Pools each layer's hidden states (features cached on disk, so a second "
                    "run costs no forward pass), fits one probe per layer, prints the table "
                    "and writes OUT/probe_layers.png and OUT/probe.json.")
    p.add_argument("--model", required=True, help="a built-in name, .gguf, or model directory")
    p.add_argument("--task", required=True,
                   help="sst2, chnsenticorp, or a labelled training file (with --eval-data)")
    p.add_argument("--eval-data", default="", help="the evaluation file of a file task")
    p.add_argument("--layers", default="all", help="all, or layer numbers like 0,3,6 "
                                                   "(0: embeddings)")
    p.add_argument("--pooling", default=None, choices=["cls", "mean", "last"],
                   help="default: mean for encoders, last for decoders")
    p.add_argument("--train-subset", type=int, default=0,
                   help="probe on this many training examples drawn with --seed (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=128, help="tokens per text")
    p.add_argument("--head-hidden", type=int, default=0,
                   help="0: a linear probe; else one hidden layer this wide")
    p.add_argument("--l2", type=float, default=1e-2, help="weight penalty λ‖W‖²")
    p.add_argument("--cache-dir", default="~/.cache/lmforge/features")
    p.add_argument("--text-column", default="")
    p.add_argument("--label-column", default="label")
    p.add_argument("--data-root", default="", help="where sst2/ and chnsenticorp/ lie "
                                                   "(default ../shared/data)")
    p.add_argument("--out", required=True, help="directory for the PNG and probe.json")
    p.set_defaults(func=cmd_probe)


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise LmforgeError(f"--set {item!r}: write key=value, e.g. --set lr=3e-5")
        out[key.strip()] = value.strip()
    return out


def cmd_finetune(args: argparse.Namespace) -> None:
    from lmforge.adapt.finetune import finetune
    from lmforge.adapt.recipe import run_recipe

    if args.config:  # the recipe names the rest; --set, --out and --eval-data override it
        extra = list(args.set)
        if args.out:
            extra.append(f"out_dir={args.out}")
        if args.eval_data:
            extra.append(f"eval_data={args.eval_data}")
        result = run_recipe(args.config, extra, args.resume, args.stop_after)
    else:
        missing = [f"--{k}" for k in ("model", "method", "data", "out") if not getattr(args, k)]
        if missing:
            raise LmforgeError(f"lmforge finetune needs {', '.join(missing)} (or --config "
                               "RECIPE.toml)")
        settings = {**parse_sets(args.set), "out_dir": args.out}
        if args.eval_data:
            settings["eval_data"] = args.eval_data
        result = finetune(args.model, args.method, args.task, args.data, settings,
                          resume=args.resume, stop_after=args.stop_after)
    share = 100 * result.trainable / result.total
    print(f"trained {result.trainable:,} of {result.total:,} parameters ({share:.2f}%)")
    if result.eval_acc is not None:
        print(f"evaluation accuracy {100 * result.eval_acc:.2f}% on {result.eval_n} examples")
    if result.eval_loss is not None:
        print(f"held-out loss {result.eval_loss:.4f} on {result.eval_n} assistant tokens")
    print(f"run directory: {result.run_dir}")


def cmd_probe(args: argparse.Namespace) -> None:
    from lmforge.adapt.probe import probe_task

    run = probe_task(args.model, args.task, args.layers, args.out, pooling=args.pooling or "",
                     eval_data=args.eval_data, train_subset=args.train_subset,
                     subset_seed=args.seed, max_len=args.max_len, cache_dir=args.cache_dir,
                     head_hidden=args.head_hidden, l2=args.l2, text_column=args.text_column,
                     label_column=args.label_column, data_root=args.data_root)
    print(f"probes on {run.n_train} training examples, scored on {run.n_eval} "
          f"(majority class {100 * run.chance:.1f}%)")
    print(f"{'layer':>5}  {'train acc':>9}  {'eval acc':>8}")
    for r in run.results:
        print(f"{r.layer:>5}  {100 * r.train_acc:>8.2f}%  {100 * r.eval_acc:>7.2f}%")
    print(f"wrote {run.plot} and {run.table}")
