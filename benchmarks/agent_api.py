"""The agent driven through lmforge's OpenAI API by the official `openai` client, as an agent
framework would drive it: accuracy, call validity and latency on the arithmetic benchmark.

    python benchmarks/agent_api.py --adapter runs/smollm2-tools-lora/adapter --arith 100

A live `lmforge serve` (in this process, on a loopback port) serves SmolLM2 with the adapter;
`--clients` threads each run an OpenAI-style tool loop: a chat request with the calculator in
`tools` (tool_choice auto), the returned `tool_calls` run by `agent/calculator.calculate`,
their results sent back as `tool` messages, until an answer without calls or `--steps`
rounds. Questions are `agent/teach.py`'s benchmark arithmetic (the hash split keeps them out of
training), the same as `benchmarks/agent.py`'s. An answer is right when its last number equals
the exact result. Writes benchmarks/results/agent_api.json (with `common.machine`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent import _equal, last_number  # noqa: E402
from common import finish, machine  # noqa: E402

import lmforge  # noqa: E402
from lmforge.agent import teach  # noqa: E402
from lmforge.agent.calculator import calculate  # noqa: E402
from lmforge.agent.tools import builtin_specs  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.serve.app import build_app, make_state  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "agent_api.json"


def serve(lm, port: int) -> uvicorn.Server:
    state, _ = make_state([lm], ctx=1024, max_batch=16, max_queue=64, kv_cache_gb=0.5)
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def episode(client, question: str, tools: list[dict], steps: int, max_tokens: int) -> dict:
    """One question through the API; counts calls and the ones that were valid."""
    messages = [{"role": "user", "content": question}]
    calls = valid = rounds = 0
    start = time.perf_counter()
    while True:
        rounds += 1
        r = client.chat.completions.create(model="smollm2", messages=messages, tools=tools,
                                           max_tokens=max_tokens, temperature=0)
        message = r.choices[0].message
        if not message.tool_calls or rounds > steps:
            return {"answer": message.content or "", "calls": calls, "valid": valid,
                    "rounds": rounds, "seconds": time.perf_counter() - start}
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            calls += 1
            try:
                result = calculate(json.loads(call.function.arguments)["expression"])
                valid += 1
            except (LmforgeError, KeyError, json.JSONDecodeError) as exc:
                result = f"error: {exc}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", required=True, help="the tool-tuned adapter directory")
    p.add_argument("--arith", type=int, default=100)
    p.add_argument("--clients", type=int, default=8, help="concurrent agent loops")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    import openai
    import torch

    torch.set_num_threads(args.threads)
    server = serve(lmforge.load("smollm2", adapter=args.adapter), args.port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="-")
    tools = builtin_specs(["calculator"])
    qs = teach.arithmetic_questions(args.arith)
    record = {"benchmark": "agent_api", **machine(threads=args.threads, reps=1),
              "adapter": args.adapter, "arith": args.arith, "clients": args.clients,
              "steps": args.steps, "max_tokens": args.max_tokens}
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        runs = list(pool.map(lambda q: episode(client, q.text, tools, args.steps,
                                               args.max_tokens), qs))
    wall = time.perf_counter() - start
    server.should_exit = True
    right = [_equal(last_number(r["answer"]), q.answer) for r, q in zip(runs, qs, strict=True)]
    calls = sum(r["calls"] for r in runs)
    record.update({
        "accuracy": sum(right) / len(qs),
        "call_validity": sum(r["valid"] for r in runs) / calls if calls else None,
        "calls_per_question": calls / len(qs),
        "requests_per_question": sum(r["rounds"] for r in runs) / len(qs),
        "seconds_per_question_latency": sum(r["seconds"] for r in runs) / len(qs),
        "wall_seconds_per_question": wall / len(qs)})
    finish(record, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
