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
import dataclasses
import json
import sys
import typing

import torch

from lmforge.adapt.commands import register as register_adapt
from lmforge.adapt.distill_commands import register as register_distill
from lmforge.agent.commands import register as register_agent
from lmforge.agent.teach_commands import register as register_agent_data
from lmforge.compress.commands import register as register_quantize
from lmforge.console import chat_loop, print_answer, take_dropped
from lmforge.errors import LmforgeError
from lmforge.eval.context_curve import add_eval_args as add_long_eval_args
from lmforge.eval.context_curve import cmd_ctx_curve
from lmforge.generate.config import COMPILE_HELP, HELP, GenerationConfig
from lmforge.generate.context import fit_context
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


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"2\": -100}'")
    return value


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """One flag per GenerationConfig field, named after it with dashes."""
    hints = typing.get_type_hints(GenerationConfig)
    for f in dataclasses.fields(GenerationConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if f.name == "stop":
            p.add_argument(flag, action="append", default=None, help=HELP[f.name])
        elif f.name == "logit_bias":
            p.add_argument(flag, type=json_object, default=None, metavar="JSON",
                           help=HELP[f.name] + ', as JSON: \'{"50256": -100}\'')
        elif hint is bool:
            p.add_argument(flag, action="store_true", default=None, help=HELP[f.name])
        else:
            kind = int if hint in (int, int | None) else float
            p.add_argument(flag, type=kind, default=None, help=HELP[f.name])


def generation_config(args: argparse.Namespace, **defaults) -> GenerationConfig:
    values = dict(defaults)
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f.name)
        if value is not None:
            values[f.name] = value
    return GenerationConfig.from_dict(values)


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


def cmd_generate(args: argparse.Namespace) -> None:
    lm = load(args)
    if lm.config.family == "encoder" or (lm.config.family == "encoder_decoder"
                                         and "<extra_id_" in args.prompt):
        return fill_blanks(lm, args)
    tok = lm.tokenizer
    if args.chat:
        ids = tok.apply_chat_template(
            ([{"role": "system", "content": args.system}] if args.system else [])
            + [{"role": "user", "content": args.prompt}])
    else:
        ids = tok.encode(args.prompt, parse_special=True)
    config = fitted_config(lm, args, len(ids))
    for d in lm.engine.stream([ids], config):
        prefix = f"\n[{d.index}] " if config.n > 1 and d.text else ""
        print(prefix + d.text, end="", flush=True)
    print()
    if args.stats:
        print_stats(lm.engine.timing)


def fitted_config(lm, args: argparse.Namespace, prompt_len: int, what: str = "prompt",
                  **defaults) -> GenerationConfig:
    """The generation flags checked against the model: logit_bias ids inside its vocabulary,
    and the prompt plus max_tokens inside its context window (`generate.context`)."""
    config = generation_config(args, **defaults)
    config.check_vocab(lm.config.vocab_size)
    return fit_context(prompt_len, config, args.max_tokens is not None,
                       lm.config.max_seq_len, lm.config.family == "encoder_decoder", what)


def fill_blanks(lm, args: argparse.Namespace) -> None:
    """Masked models: an encoder fills each [MASK], an encoder-decoder each <extra_id_k>."""
    from lmforge.generate.fill import fill_masks, fill_spans

    if lm.config.family == "encoder":
        if lm.metadata.get("format") is None:  # converted BERTs keep no MLM head
            raise LmforgeError(
                f"{lm.name} has no masked-LM head (it was converted from {lm.source}); fill "
                "[MASK] with an encoder trained by `lmforge train` (objective mlm); for "
                "sentence embeddings use lmforge.embed.embed(lm, texts)")
        print(fill_masks(lm.model, lm.tokenizer, args.prompt))
        return
    filled, spans = fill_spans(lm.model, lm.tokenizer, args.prompt,
                               generation_config(args).max_tokens)
    print(filled)
    for k, span in enumerate(spans):
        print(f"  <extra_id_{k}> → {span!r}", file=sys.stderr)


def print_stats(t) -> None:
    prefill = t.prompt_tokens / t.prefill_s if t.prefill_s else float("nan")
    decode = t.generated_tokens / t.decode_s if t.decode_s else float("nan")
    print(f"prompt tokens: {t.prompt_tokens}, generated tokens: {t.generated_tokens}, "
          f"prefill: {prefill:.1f} tokens/s, decode: {decode:.1f} tokens/s", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from lmforge.generate.chat import ChatSession

    defaults = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 512}
    if args.api:
        from lmforge.serve.client import chat_repl

        if args.compile:
            raise LmforgeError("--compile goes with --model: with --api the server decodes "
                               "(start it with `lmforge serve --compile`)")
        if args.context_shift or args.rope_scaling:
            raise LmforgeError("--context-shift and --rope-scaling go with a local --model, "
                               "not with --api")
        if args.adapter:
            raise LmforgeError("--adapter goes with a local --model: with --api, start the "
                               "server with `lmforge serve --adapter DIR` and pick "
                               "MODEL:DIRNAME with --model")
        return chat_repl(args.api, args.api_key, args.model, args.system,
                         generation_config(args, **defaults))
    if args.model is None:
        raise LmforgeError("give --model NAME (or --api URL to chat with a running server)")
    lm = load(args)
    # the window is checked once against the shortest chat (system prompt, empty message);
    # longer chats drop their oldest turns to fit (ChatSession)
    head = [{"role": "system", "content": args.system}] if args.system else []
    shortest = lm.tokenizer.apply_chat_template(head + [{"role": "user", "content": ""}])
    config = fitted_config(lm, args, len(shortest), "system prompt (in the chat template)",
                           **defaults)
    session = ChatSession(lm.engine, args.system)
    print(f"Chatting with {lm.name}. /reset clears the history, /exit quits; "
          "Ctrl-C stops an answer.", file=sys.stderr)

    def answer(line: str) -> None:
        deltas = session.send(line, config)
        print_answer((d.text for d in deltas), lambda: take_dropped(session),
                     "the context window", (LmforgeError,))
        deltas.close()  # an interrupted answer still ends its turn in the history
        if args.stats:
            print_stats(lm.engine.timing)

    chat_loop(answer, session.reset)


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

    g = sub.add_parser("generate", help="continue a prompt (or answer it with --chat)")
    add_model_args(g)
    g.add_argument("--prompt", required=True,
                   help="raw text; the model's special tokens in it are parsed")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.add_argument("--system", default=None, help="system message (with --chat)")
    g.add_argument("--stats", action="store_true", help="print token counts and tokens/s")
    add_generation_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive multi-turn chat")
    add_model_args(c, required=False)
    c.add_argument("--api", default=None, metavar="URL",
                   help="chat with a running `lmforge serve` (or any OpenAI-compatible server) "
                        "instead of a local model; --model then picks the served model")
    c.add_argument("--api-key", default=None, help="the server's API key (with --api)")
    c.add_argument("--system", default=None, help="system message")
    c.add_argument("--stats", action="store_true", help="print tokens/s after each answer")
    add_generation_args(c)
    c.set_defaults(func=cmd_chat)

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
    e.add_argument("--ctx", type=int, default=1024, help="window length in tokens")
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
