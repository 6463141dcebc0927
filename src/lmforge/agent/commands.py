"""`lmforge agent`: a question answered with tools, every turn, call and observation shown.

    lmforge agent --model smollm2 --tools calculator "What is 1234 * 5678?"
    lmforge agent --model smollm2 --tools calculator --constrain --tool-choice required \\
        "What is 1234 * 5678?"
    lmforge agent --model smollm2 --adapter runs/tools-lora --tools calculator,python,files \\
        --allow data/ "What is the total of units in sales.csv?"
    lmforge agent --model smollm2 --tools search,memory --db rag.db --collection notes

Without a question it is interactive and keeps the conversation. Only argparse is imported
here; the model and the tools load inside the command.
"""

from __future__ import annotations

import argparse
import sys

from lmforge.errors import LmforgeError

TOOLS_HELP = "comma-separated tool sets: calculator, python, search, files, memory"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `agent` to the `lmforge` subcommands."""
    from lmforge.cli import add_model_args

    p = sub.add_parser("agent", help="answer with tools (calculator, python, search, files, "
                                     "memory), showing every step")
    add_model_args(p)
    p.add_argument("question", nargs="?", default=None, help="omit for an interactive session")
    p.add_argument("--tools", default="calculator", help=TOOLS_HELP + " (default calculator)")
    p.add_argument("--allow", action="append", default=[], metavar="DIR",
                   help="a directory read_file may read (repeatable)")
    p.add_argument("--db", default=None, help="the Milvus Lite file of --collection (search) "
                                              "and of the long-term memory")
    p.add_argument("--collection", default="documents", help="the collection search reads")
    p.add_argument("--max-steps", type=int, default=8, help="turns with tool calls before "
                                                            "giving up (default 8)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per turn (256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--constrain", action="store_true",
                   help="constrain tool calls to the tools' JSON schemas (agent/constrain.py)")
    p.add_argument("--tool-choice", default="auto", metavar="auto|required|TOOL",
                   help="a question's first turn: free (auto, default), a call of any tool "
                        "(required) or of this tool, constrained to its schema")
    p.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> None:
    from lmforge.agent.console import run_streamed
    from lmforge.agent.loop import LLMBrain
    from lmforge.cli import load
    from lmforge.generate.config import GenerationConfig

    tools = _tools(args)
    specs = [t.spec() for t in tools]
    if args.tool_choice not in ("auto", "required", *(t.name for t in tools)):
        raise LmforgeError(f"--tool-choice {args.tool_choice!r} is none of auto, required or "
                           f"the tools ({', '.join(t.name for t in tools)})")
    lm = load(args)
    processors, first_turn = [], None
    if args.constrain or args.tool_choice != "auto":
        from lmforge.agent.constrain import tool_call_processor

        if args.constrain:
            processors.append(tool_call_processor(lm.tokenizer, specs))
        if args.tool_choice != "auto":
            first_turn = [tool_call_processor(lm.tokenizer, specs, args.tool_choice)]
    brain = LLMBrain(lm, GenerationConfig(max_tokens=args.max_tokens,
                                          temperature=args.temperature), processors, first_turn)
    if args.question:
        run_streamed(brain, args.question, tools, args.max_steps)
        return
    history: list[dict] = []
    print(f"Agent on {lm.name} with {', '.join(t.name for t in tools)}; /exit quits.",
          file=sys.stderr)
    for line in sys.stdin:
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip():
            history = run_streamed(brain, line.strip(), tools, args.max_steps, history).messages


def _tools(args: argparse.Namespace) -> list:
    from lmforge.agent.tools import builtin_tools

    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    retriever = memory = None
    if ("search" in names or "memory" in names) and not args.db:
        raise LmforgeError("--tools search and memory need --db FILE.db")
    if "files" in names and not args.allow:
        raise LmforgeError("--tools files needs --allow DIR (the directories it may read)")
    if args.db and ("search" in names or "memory" in names):
        from lmforge.agent.memory import LongTermMemory
        from lmforge.rag.commands import retriever as make_retriever
        from lmforge.rag.embedder import load_embedder
        from lmforge.rag.store import VectorStore

        store = VectorStore(args.db)
        if "search" in names:
            args.embed_model, args.embed_dtype, args.zh_dict = None, "fp32", None
            retriever = make_retriever(args, store)
        if "memory" in names:
            memory = LongTermMemory(store, load_embedder("minilm"))
    return builtin_tools(names, args.allow, retriever, memory)
