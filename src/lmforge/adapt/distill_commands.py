"""`lmforge distill`: a student decoder trained on a teacher's softened distribution.

    lmforge distill --config configs/distill-smollm2-student.toml [--set distill.alpha=0.7]

Only argparse is imported here; the training modules load inside the command.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add `distill` to the `lmforge` subcommands."""
    d = sub.add_parser(
        "distill", help="train a small decoder on a teacher's distribution (knowledge "
                        "distillation)",
        description="A run config ([model] the student, [data] prepared with the teacher's "
                    "tokenizer, [train]) plus a [distill] table (teacher, temperature, alpha, "
                    "teacher_logits = cache|online, top_k, cache_dir, chunks). Writes a run "
                    "directory like `lmforge train` (checkpoints, --resume, metrics.jsonl with "
                    "val_kl and val_ce, loss.png). Settings: docs/adaptation.md.")
    d.add_argument("--config", required=True,
                   help="a TOML file with [model], [data], [train] and [distill]")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set distill.temperature=4")
    d.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    d.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="pause after this step (checkpointed; continue with --resume)")
    d.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> None:
    from lmforge.adapt.distill import distill, load_config

    run, settings = load_config(args.config, args.set)
    run_dir = distill(run, settings, resume=args.resume, stop_after=args.stop_after)
    print(f"run directory: {run_dir}")
