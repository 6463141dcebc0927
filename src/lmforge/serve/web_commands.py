"""The `lmforge web` subcommand: a Gradio chat over a model in process or a running server.

    lmforge web --model smollm2 [--dtype bf16] [--port 7860]
    lmforge web --api http://127.0.0.1:8000 [--api-key KEY] [--model-name ID]
    lmforge web --model smollm2 --rag-db rag.db [--collection notes]   # + a documents tab

Only argparse, the generation config and the --threads check are imported here; Gradio and
the model load inside the command.
"""

from __future__ import annotations

import argparse

from lmforge.generate.config import COMPILE_HELP
from lmforge.hardware import thread_count

MODEL_HELP = ("run this model in process: a built-in name (see `lmforge models`), a .gguf file, "
              "or a Hugging Face / lmforge checkpoint or run directory")


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser(
        "web", help="chat in the browser (Gradio) with a model in process or via --api",
        description="A Gradio chat page: streamed answers, multi-turn history trimmed to the "
                    "context window, a system prompt, sampling sliders, a Stop button, and "
                    "tokens/s after each answer. Open the printed URL in a browser.")
    source = w.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=MODEL_HELP)
    source.add_argument("--api", metavar="URL",
                        help="a running OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    w.add_argument("--api-key", default=None, help="bearer key for --api")
    w.add_argument("--model-name", default=None,
                   help="model id on the --api server (default: the first it lists)")
    w.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "q"],
                   help="weights dtype with --model (default fp32; q: a GGUF's quantized "
                        "weights as they are)")
    w.add_argument("--adapter", default=None, metavar="DIR",
                   help="an adapter directory trained on --model, put on top of it")
    w.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads (default: torch's)")
    w.add_argument("--compile", action="store_true", help=COMPILE_HELP + " (with --model)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    w.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    w.add_argument("--system", default="", help="the system prompt the page opens with")
    w.add_argument("--rag-db", default=None, metavar="DB",
                   help="add a tab answering questions from this `lmforge index` database "
                        "(with --model)")
    w.add_argument("--collection", default="documents",
                   help="the --rag-db collection to answer from (default documents)")
    w.add_argument("--max-tokens", type=int, default=512, help="initial max tokens slider")
    w.add_argument("--temperature", type=float, default=0.2, help="initial temperature")
    w.add_argument("--top-p", type=float, default=0.9, help="initial top-p")
    w.add_argument("--top-k", type=int, default=0, help="initial top-k (0: off)")
    w.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="initial repetition penalty (1: off)")
    w.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> None:
    from lmforge.errors import LmforgeError
    from lmforge.generate.config import GenerationConfig
    from lmforge.serve import web

    if args.model and (args.api_key or args.model_name):
        raise LmforgeError("--api-key and --model-name go with --api, not --model")
    if args.api and args.adapter:
        raise LmforgeError("--adapter goes with --model (serve it with `lmforge serve "
                           "--adapter` to use it through --api)")
    if args.api and args.compile:
        raise LmforgeError("--compile goes with --model: the --api server decodes, not this page")
    if args.api and args.rag_db:
        raise LmforgeError("--rag-db goes with --model (over --api, use the server's "
                           "`lmforge serve --rag-db` and POST /v1/rag/ask)")
    if not 0 < args.port < 65536:
        raise LmforgeError(f"--port {args.port} is not a port number (1-65535)")
    defaults = web.Defaults(args.system, args.temperature, args.top_p, args.top_k,
                            args.repetition_penalty, args.max_tokens)
    GenerationConfig(max_tokens=defaults.max_tokens, temperature=defaults.temperature,
                     top_p=defaults.top_p, top_k=defaults.top_k,
                     repetition_penalty=defaults.repetition_penalty)  # names a bad value
    if args.api:
        backend = web.ApiBackend(args.api, args.api_key, args.model_name)
    else:
        import torch

        from lmforge.api import load

        if args.threads:
            torch.set_num_threads(args.threads)
        backend = web.LocalBackend(load(args.model, dtype=args.dtype, compile=args.compile,
                                        adapter=args.adapter),
                                   args.dtype)
    rag = None
    if args.rag_db:
        from lmforge.serve.web_rag import RagTab

        rag = RagTab(backend, args.rag_db, args.collection)
    web.launch(backend, defaults, args.host, args.port, rag)
