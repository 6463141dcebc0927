"""`lmforge eval`: perplexity and bits per byte of models on a text, the perplexity curve
over context lengths, or multiple-choice tasks.

    lmforge eval --model smollm2 --input ../shared/data/wikitext-2/test.txt
    lmforge eval --model smollm2 --tasks hellaswag,arc_easy --limit 200 --out runs/eval.json
    lmforge eval --compare runs/a.json runs/b.json

The models load inside the commands; the help texts shared with the other model commands
come from cli.py, imported inside `register` because cli.py imports this module.
"""

from __future__ import annotations

import argparse
import json

import torch

from lmforge.errors import LmforgeError
from lmforge.eval.context_curve import add_eval_args as add_long_eval_args
from lmforge.eval.context_curve import cmd_ctx_curve
from lmforge.hardware import thread_count


def register(sub: argparse._SubParsersAction) -> None:
    """Add `eval` to the `lmforge` subcommands."""
    from lmforge.cli import ADAPTER_HELP, BUILTIN_HELP

    e = sub.add_parser(
        "eval", help="perplexity and bits per byte on a text (--input), or tasks (--tasks)",
        description="Neural models score the text in non-overlapping windows of --ctx tokens "
                    "(the first token of each window has no context and is not scored), or "
                    "in sliding windows with --stride; --ctx-curve draws perplexity against "
                    "context length (docs/long_context.md). "
                    "N-gram ARPA models score each line as a sentence; their perplexity "
                    "leaves out-of-vocabulary words out (SRILM). Bits per byte and per "
                    "character divide the total NLL (in bits) by the UTF-8 bytes or "
                    "characters of the whole text, so models with different tokenizers "
                    "compare. Several --model values print a table. --tasks runs "
                    "multiple-choice tasks instead (docs/eval_tasks.md).")
    e.add_argument("--model", nargs="+",
                   help=BUILTIN_HELP + ", or an n-gram .arpa(.gz) file; several compare")
    e.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "q"],
                   help="weights and activations dtype of neural models (default fp32); q: a "
                        "GGUF's quantized weights as they are (docs/gguf.md)")
    e.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads (default: torch's)")
    e.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)
    e.add_argument("--input", default=None, help="a UTF-8 text file (perplexity)")
    e.add_argument("--ctx", type=int, default=None,
                   help="window length in tokens (default: the model's window, at most 1024)")
    add_long_eval_args(e)
    e.add_argument("--chars", type=int, default=None, help="score only the first N characters")
    e.add_argument("--json", action="store_true", help="print one JSON record per model")
    e.add_argument("--tasks", action="append", default=None, metavar="LIST",
                   help="tasks to run instead of --input, comma-separated or repeated; "
                        "`--tasks list` describes them (docs/eval_tasks.md)")
    e.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    e.add_argument("--shots", type=int, default=None,
                   help="few-shot demonstrations per example (tasks; default: each task's "
                        "own, `--tasks list`)")
    e.add_argument("--seed", type=int, default=1234,
                   help="seed of the few-shot draws and the bootstrap (tasks)")
    e.add_argument("--out", default=None, help="report JSON (tasks); examples in .jsonl beside")
    e.add_argument("--compare", nargs="+", default=None, metavar="REPORT",
                   help="print these report JSONs side by side with their differences to "
                        "the first (no --model needed; docs/eval_tasks.md)")
    e.add_argument("--data-root", default=None,
                   help="the tasks' data directory (default ../shared/data of the repository)")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from lmforge.eval.models import evaluate_model, format_record, format_table
    from lmforge.io import read_text

    if args.compare:
        from lmforge.eval.tasks.compare import compare_reports

        print(compare_reports(args.compare))
        return
    if args.tasks:
        return cmd_eval_tasks(args)
    if not args.input or not args.model:
        raise LmforgeError("lmforge eval needs --model and --input FILE (perplexity) or "
                           "--tasks LIST (`--tasks list` shows the tasks)")
    text = read_text(args.input, "--input")
    if args.chars:
        text = text[: args.chars]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ctx_curve:
        return cmd_ctx_curve(args, text)
    records = [{**evaluate_model(m, text, args.ctx, args.dtype, progress=True,
                                 adapter=args.adapter, stride=args.stride, rope_scaling=s),
                "input": args.input} for m in args.model for s in (args.rope_scaling or [None])]
    if args.json:
        print("\n".join(json.dumps(r) for r in records))
    elif len(records) == 1:
        print(format_record(records[0]))
    else:
        print(format_table(records))


def cmd_eval_tasks(args: argparse.Namespace) -> None:
    from lmforge.api import load
    from lmforge.eval.tasks import describe_tasks, evaluate_tasks, markdown_table, write_report
    from lmforge.eval.tasks.runner import resolve_tasks

    names = [n.strip() for t in args.tasks for n in t.split(",") if n.strip()]
    if names == ["list"]:
        print(describe_tasks(args.data_root))
        return
    if not args.model or len(args.model) != 1:
        raise LmforgeError("--tasks evaluates one --model at a time")
    resolve_tasks(names, args.shots, args.data_root)  # fail before the model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load(args.model[0], args.dtype, adapter=args.adapter)
    report, records = evaluate_tasks(lm, names, args.limit, args.seed, args.shots,
                                     data_root=args.data_root, adapter=args.adapter)
    if args.out:
        lines = write_report(args.out, report, records)
        print(f"wrote {args.out} and {lines}")
    print(markdown_table(report))
