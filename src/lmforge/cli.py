"""`lmforge` command line: each subcommand parses its arguments and calls the Python API.

    lmforge models
    lmforge generate --model smollm2 --prompt "Once upon a time" --max-tokens 64
    lmforge chat --model smollm2 --system "You are terse."
    lmforge eval --model smollm2 --input ../shared/data/wikitext-2/test.txt
    lmforge convert --model smollm2 --to hf --out smollm2-hf
    lmforge prepare --tokenizer char --input train.txt --val val.txt --out data/char
    lmforge train --config configs/shakespeare-char.toml

Errors are printed as one message without a traceback (add --debug for the traceback).
"""

from __future__ import annotations

import argparse
import sys

import torch

from lmforge.adapt.commands import register as register_adapt
from lmforge.adapt.distill_commands import register as register_distill
from lmforge.agent.commands import register as register_agent
from lmforge.agent.teach_commands import register as register_agent_data
from lmforge.compress.commands import register as register_quantize
from lmforge.errors import LmforgeError
from lmforge.eval.commands import register as register_eval
from lmforge.generate.commands import register as register_generate
from lmforge.generate.config import COMPILE_HELP
from lmforge.hardware import thread_count
from lmforge.ngram.commands import register as register_ngram
from lmforge.rag.commands import register as register_rag
from lmforge.segment.commands import register as register_segment
from lmforge.serve.commands import register as register_serve
from lmforge.serve.web_commands import register as register_web
from lmforge.tokenizers.commands import register as register_tokenizers

BUILTIN_HELP = "a built-in name (see `lmforge models`), a .gguf file, or a Hugging Face / " \
               "lmforge checkpoint or run directory"
ADAPTER_HELP = "an adapter directory (LoRA, …; lmforge's or peft's) trained on --model, put " \
               "on top of it"


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help=BUILTIN_HELP)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "q"],
                   help="weights and activations dtype (default fp32); q: a GGUF's Q8_0/Q4_0/"
                        "Q4_1 weights as they are, in int8/int4 layers (docs/gguf.md)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)
    p.add_argument("--rope-scaling", default=None, metavar="METHOD:FACTOR",
                   help="run a RoPE model past its trained window: linear:S, ntk:S or yarn:S "
                        "(S times the window; docs/long_context.md)")


def load(args: argparse.Namespace):
    from lmforge.api import load as load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, dtype=args.dtype, compile=args.compile, adapter=args.adapter,
                      rope_scaling=args.rope_scaling)


def cmd_models(args: argparse.Namespace) -> None:
    from lmforge.interop.registry import list_models

    for m in list_models():
        print(f"{m.name:<9} {m.description}")
        if m.path is None:
            print(f"{'':<9} not installed: {m.install}")
        else:
            params = f"{m.n_params / 1e6:.0f}M parameters, " if m.n_params else ""
            print(f"{'':<9} {params}{m.size_bytes / 1e6:.0f} MB at {m.path}")


def cmd_convert(args: argparse.Namespace) -> None:
    from lmforge.interop.convert import convert

    convert(args.model, args.to, args.out, args.dtype, args.force, args.type)
    print(f"wrote {args.to} model to {args.out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from lmforge.data.prepare import prepare

    meta = prepare(args.tokenizer, args.input, args.out, args.val, args.val_fraction)
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["tokens"].items())
    print(f"wrote {args.out}: {counts} tokens ({meta['dtype']}, vocabulary "
          f"{meta['vocab_size']:,})")


def cmd_train(args: argparse.Namespace) -> None:
    from lmforge.adapt.recipe import is_recipe, run_recipe
    from lmforge.train.config import load_run_config
    from lmforge.train.loop import train

    if is_recipe(args.config):  # a [finetune] table: the lmforge finetune command it names
        result = run_recipe(args.config, args.set or [], args.resume, args.stop_after)
        print(f"run directory: {result.run_dir} (results.json, metrics.jsonl, loss.png)")
        return
    run = load_run_config(args.config, args.set or [])
    run_dir = train(run, resume=args.resume, stop_after=args.stop_after)
    print(f"run directory: {run_dir} (metrics.jsonl, loss.png, checkpoints/, best/)")


def cmd_masks(args: argparse.Namespace) -> None:
    from lmforge.model.masks import draw, family_masks, grid

    if args.family == "prefix" and not 0 < args.prefix <= args.len:
        raise LmforgeError(f"--prefix must be between 1 and --len ({args.len}) for the prefix "
                           "family")
    masks = family_masks(args.family, args.len, args.prefix)
    for name, mask in masks.items():
        print(f"{name}  (rows: queries, columns: keys; x = visible)\n{grid(mask)}\n")
    if args.png:
        draw(masks, args.png)
        print(f"wrote {args.png}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the built-in models").set_defaults(func=cmd_models)
    register_generate(sub)
    register_eval(sub)

    d = sub.add_parser("prepare", help="tokenise text into memory-mapped training shards")
    d.add_argument("--tokenizer", required=True,
                   help="`char` (built from the input), a tokenizer directory, or a model "
                        "(built-in name, .gguf, Hugging Face or lmforge directory)")
    d.add_argument("--input", required=True, nargs="+", help="text files or directories")
    d.add_argument("--val", default=None, help="a text file (or directory) for validation")
    d.add_argument("--val-fraction", type=float, default=None,
                   help="use the last fraction of the tokens for validation instead")
    d.add_argument("--out", required=True, help="output data directory")
    d.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="train a model from a TOML config")
    t.add_argument("--config", required=True, help="a TOML file with [model], [data], [train]")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=3e-4")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="pause after this step (checkpointed; continue with --resume)")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("masks", help="print and draw the attention masks of a family")
    m.add_argument("--family", required=True,
                   choices=["decoder", "prefix", "encoder", "encoder_decoder"])
    m.add_argument("--len", type=int, default=8, help="sequence length")
    m.add_argument("--prefix", type=int, default=0, help="prefix length (prefix family)")
    m.add_argument("--png", default=None, help="also draw the masks into this PNG")
    m.set_defaults(func=cmd_masks)

    v = sub.add_parser("convert", help="convert a model to a Hugging Face or lmforge directory "
                       "or a GGUF file")
    v.add_argument("--model", required=True, help=BUILTIN_HELP)
    v.add_argument("--to", required=True, choices=["hf", "lmforge", "gguf"])
    v.add_argument("--out", required=True, help="output directory (--to gguf: output file)")
    v.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    v.add_argument("--type", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"],
                   help="--to gguf: tensor type of 2-D weights (norms stay f32)")
    v.add_argument("--force", action="store_true",
                   help="replace --out when it is not empty (only once the new model is "
                        "written whole)")
    v.set_defaults(func=cmd_convert)
    register_web(sub)
    register_segment(sub)
    register_serve(sub)
    register_tokenizers(sub)
    register_ngram(sub)
    register_adapt(sub)
    register_distill(sub)
    register_quantize(sub)
    register_rag(sub)
    register_agent(sub)
    register_agent_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LmforgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
