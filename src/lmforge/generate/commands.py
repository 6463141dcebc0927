"""`lmforge generate` and `lmforge chat`: a prompt continued (or answered) and an
interactive chat, with one flag per `GenerationConfig` field.

    lmforge generate --model smollm2 --prompt "Once upon a time" --max-tokens 64
    lmforge chat --model smollm2 --system "You are terse."
    lmforge chat --api http://127.0.0.1:8000 --model smollm2

The model loads inside the commands (`lmforge.cli.load`, imported there because cli.py
imports this module to register the subcommands).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from lmforge.console import chat_loop, print_answer, take_dropped
from lmforge.errors import LmforgeError
from lmforge.generate.config import HELP, GenerationConfig
from lmforge.generate.context import fit_context


def register(sub: argparse._SubParsersAction) -> None:
    """Add `generate` and `chat` to the `lmforge` subcommands."""
    from lmforge.cli import add_model_args

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


def cmd_generate(args: argparse.Namespace) -> None:
    from lmforge.cli import load

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
    from lmforge.cli import load
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
