"""`lmforge serve`: an OpenAI-compatible API server (only argparse, the generation config and
the --threads check are imported here).

    lmforge serve --model smollm2 --model minilm --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}]}'
"""

from __future__ import annotations

import argparse
import os

from lmforge.generate.config import COMPILE_HELP
from lmforge.hardware import thread_count


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", action="append", required=True,
                   help="a model to serve (repeatable: e.g. a chat model and an embedding "
                        "model); a built-in name, a .gguf file, or a checkpoint directory")
    s.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="also serve the first --model with this adapter on top, as "
                        "MODEL:DIRNAME (repeatable; each loads its own copy of the base)")
    s.add_argument("--served-model-name", default=None,
                   help="the id clients use for the first --model (default: its name)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get("LMFORGE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LMFORGE_API_KEY; "
                        "none: no key)")
    s.add_argument("--max-batch", type=int, default=32,
                   help="most sequences decoded together (1: no batching)")
    s.add_argument("--max-queue", type=int, default=256,
                   help="most sequences waiting for a slot; more get a 429")
    s.add_argument("--kv-cache-gb", type=float, default=None,
                   help="memory for KV-cache slots (default: a quarter of the available "
                        "memory, at most 2 × max-batch slots)")
    s.add_argument("--ctx", type=int, default=None,
                   help="context window per sequence (default: the model's, at most 2048)")
    s.add_argument("--no-prefix-reuse", action="store_true",
                   help="prefill every prompt whole (to measure what prefix reuse saves)")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "q"],
                   help="q: a GGUF's Q8_0/Q4_0/Q4_1 weights as they are (docs/gguf.md)")
    s.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads (default: torch's)")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.add_argument("--rag-db", default=None, metavar="DB",
                   help="answer POST /v1/rag/ask from this Milvus database (see lmforge index)")
    s.add_argument("--rag-collection", default="documents", help="its collection (documents)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from lmforge.api import load, load_with_adapters
    from lmforge.errors import LmforgeError
    from lmforge.serve.app import build_app, make_state, model_id

    if not 0 < args.port < 65536:
        raise LmforgeError(f"--port {args.port} is not a TCP port (1…65535)")
    if args.ctx is not None and args.ctx < 2:
        raise LmforgeError("--ctx must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    # the adapters read the first model's weights (one copy however many adapters)
    first, *tuned = load_with_adapters(args.model[0], args.adapter, dtype=args.dtype)
    models = [first] + [load(spec, dtype=args.dtype) for spec in args.model[1:]]
    base_id = args.served_model_name or model_id(first)
    for lm, adapter in zip(tuned, args.adapter, strict=True):
        lm.name = f"{base_id}:{os.path.basename(os.path.normpath(adapter))}"
    models += tuned
    if args.compile:
        from lmforge.generate.compiled import compile_decode

        for lm in models:
            if lm.config.family != "encoder":  # encoders embed in one pass: no decode step
                compile_decode(lm.model)
    state, lines = make_state(models, args.served_model_name, args.ctx, args.max_batch,
                              args.max_queue, args.kv_cache_gb, args.api_key,
                              not args.no_prefix_reuse)
    if args.rag_db is not None:
        from lmforge.rag.serve import RagService

        state.rag = RagService(args.rag_db, args.rag_collection)
    key = "required (Authorization: Bearer …)" if args.api_key else "not required"
    print(f"lmforge serve: listening on http://{args.host}:{args.port}/v1 · API key {key}")
    for line in lines:
        print(f"  serving {line}")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"  warning: {args.host} is reachable from other machines and no API key is set")
    uvicorn.run(build_app(state), host=args.host, port=args.port, log_level="warning")
