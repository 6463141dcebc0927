"""Tool use by SmolLM2: accuracy alone and as an agent, tool-call validity, steps and time.

    python benchmarks/agent.py --adapter runs/smollm2-tools-lora/adapter          # full run
    python benchmarks/agent.py --arith 20 --gsm8k 0 --configs alone agent-base    # quick check

Questions: `--arith` arithmetic problems of `agent/teach.py` (2–5-digit operands, + − × ÷ with
exact quotients, varied phrasings) drawn with `teach.BENCH_SEED` from the benchmark side of
the hash split, so none is a training problem; `--gsm8k` GSM8K test problems in file order
(`../shared/data/gsm8k/test.jsonl`).

Configurations (`--configs`):
- `alone`: the model in a plain chat (SmolLM2's default system prompt), no tools.
- `agent-base`, `agent-tuned` (needs `--adapter`): the agent loop with the tools of `--tools`
  listed by `calls.system_prompt`, on the base model or the tool-tuned adapter;
  `…-constrained` adds `agent/constrain.py`'s `tool_call_processor` (calls decoded within
  the tools' JSON schemas).
Every configuration decodes greedily, at most `--max-tokens` per turn. The agent runs all
questions of a batch in rounds: each round generates one turn for every unfinished
conversation in one batch, runs the calls of each turn and appends the observations (a
malformed or invalid call becomes an error observation), until a turn has no call or
`--steps` turns are used. The answer is the last number of the final turn (the last turn
when the step limit is hit); arithmetic is right when it equals the exact result, GSM8K by
the harness's normalisation against the gold number.

Figures: accuracy per set; the tool-call validity rate (call blocks that parse and whose
tool exists in the list and accepts the arguments, over all call blocks generated); mean
turns per question; wall seconds per question (batched, so the time of a batch over its
size). Writes benchmarks/results/agent.json (with `common.machine`) and prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, machine  # noqa: E402

import lmforge  # noqa: E402
from lmforge.agent import teach  # noqa: E402
from lmforge.agent.calls import parse_calls, render_calls, system_prompt  # noqa: E402
from lmforge.agent.tools import builtin_tools  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.eval.generated import extract_flexible, gsm8k_exact_match, load_gsm8k  # noqa: E402
from lmforge.generate.config import GenerationConfig  # noqa: E402
from lmforge.tokenizers.chat import encode_chat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / ".." / "shared" / "data" / "gsm8k"
OUT = ROOT / "benchmarks" / "results" / "agent.json"
CONFIGS = ("alone", "agent-base", "agent-tuned", "agent-base-constrained",
           "agent-tuned-constrained")
ALONE_TOKENS = 256  # room for a worked GSM8K solution without tools
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Question:
    text: str
    check: object  # callable(answer text) -> bool
    set: str


@dataclass
class Episode:
    """One question's conversation and its counts."""

    messages: list[dict]
    turns: int = 0
    calls: int = 0
    valid: int = 0
    answer: str = ""
    done: bool = False
    log: list[str] = field(default_factory=list)


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def questions(n_arith: int, n_gsm8k: int) -> list[Question]:
    out = []
    for q in teach.arithmetic_questions(n_arith):
        out.append(Question(q.text, lambda t, a=q.answer: _equal(last_number(t), a), "arith"))
    for r in load_gsm8k(GSM8K, "test", n_gsm8k) if n_gsm8k else []:
        out.append(Question(r.question, lambda t, r=r: gsm8k_exact_match(
            extract_flexible(t), r) == 1.0, "gsm8k"))
    return out


def _equal(text: str | None, value: int) -> bool:
    try:
        return text is not None and float(text) == value
    except ValueError:
        return False


def run_calls(text: str, tools: dict, ep: Episode) -> list[str]:
    """Observations of the calls in a turn; counts the valid ones."""
    parsed = parse_calls(text)
    ep.calls += len(parsed.calls) + len(parsed.errors)
    out = [f"error: {e}" for e in parsed.errors]
    for call in parsed.calls:
        if call.name not in tools:
            out.append(f"error: there is no tool {call.name!r}; the tools are "
                       f"{', '.join(tools)}")
            continue
        try:
            args = tools[call.name].validate(call.arguments)
        except LmforgeError as e:
            out.append(f"error: {e}")
            continue
        ep.valid += 1
        try:
            out.append(tools[call.name](**args))
        except Exception as e:  # a failing tool is an observation, never the run's end
            out.append(f"error: {e}")
    return out


def agent_batch(lm, qs: list[Question], tools: dict, args, processors) -> list[Episode]:
    """Rounds of one turn per unfinished episode, all in one generation batch."""
    system = system_prompt([t.spec() for t in tools.values()])
    eps = [Episode([{"role": "system", "content": system}, {"role": "user", "content": q.text}])
           for q in qs]
    config = GenerationConfig(max_tokens=args.max_tokens, temperature=0.0,
                              stop=["</tool_call>"])
    for _ in range(args.steps):
        live = [e for e in eps if not e.done]
        if not live:
            break
        prompts = [encode_chat(lm.tokenizer, e.messages) for e in live]
        texts = [""] * len(live)
        for d in lm.engine.stream(prompts, config, processors=processors):
            texts[d.index] += d.text
        for e, text in zip(live, texts, strict=True):
            e.turns += 1
            parsed = parse_calls(text)
            if not parsed.calls and not parsed.errors:
                e.answer, e.done = text, True
                continue
            e.answer = text
            turn = render_calls(parsed.calls, parsed.content) if not parsed.errors else text
            e.messages.append({"role": "assistant", "content": turn})
            e.messages += [{"role": "tool", "content": o} for o in run_calls(text, tools, e)]
    return eps


def alone_batch(lm, qs: list[Question], args) -> list[Episode]:
    config = GenerationConfig(max_tokens=ALONE_TOKENS, temperature=0.0)
    eps = [Episode([{"role": "user", "content": q.text}]) for q in qs]
    prompts = [encode_chat(lm.tokenizer, e.messages) for e in eps]
    for e, c in zip(eps, lm.engine.generate(prompts, config), strict=True):
        e.answer, e.turns, e.done = c.text, 1, True
    return eps


def processors_for(name: str, tools: dict, tokenizer) -> list:
    if not name.endswith("constrained"):
        return []
    try:
        from lmforge.agent.constrain import tool_call_processor
    except ImportError:
        raise LmforgeError("--configs …-constrained needs lmforge.agent.constrain "
                           "(tool_call_processor), which is not installed") from None
    return [tool_call_processor([t.spec() for t in tools.values()], tokenizer)]


def run_config(name: str, models: dict, qs: list[Question], tools: dict, args) -> dict:
    lm = models["tuned" if "tuned" in name else "base"]
    processors = processors_for(name, tools, lm.tokenizer)
    eps: list[Episode] = []
    t0 = time.perf_counter()
    for start in range(0, len(qs), args.batch):
        chunk = qs[start:start + args.batch]
        eps += alone_batch(lm, chunk, args) if name == "alone" else \
            agent_batch(lm, chunk, tools, args, processors)
        print(f"  {name}: {len(eps)}/{len(qs)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    row = {"config": name, "seconds_per_question": round(seconds / max(len(qs), 1), 2),
           "mean_turns": round(sum(e.turns for e in eps) / max(len(eps), 1), 2)}
    for s in ("arith", "gsm8k"):
        pairs = [(q, e) for q, e in zip(qs, eps, strict=True) if q.set == s]
        if pairs:
            row[f"{s}_accuracy"] = round(sum(q.check(e.answer) for q, e in pairs)
                                         / len(pairs), 4)
    calls = sum(e.calls for e in eps)
    row["calls"] = calls
    row["call_validity"] = round(sum(e.valid for e in eps) / calls, 4) if calls else None
    row["examples"] = [{"question": q.text, "messages": e.messages[1:], "final": e.answer}
                       for q, e in list(zip(qs, eps, strict=True))[:2]]
    return row


def markdown(rows: list[dict]) -> str:
    head = "| config | arithmetic | GSM8K | call validity | calls | turns | s/question |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        def pct(v):
            return "–" if v is None else f"{100 * v:.1f}%"
        lines.append(f"| {r['config']} | {pct(r.get('arith_accuracy'))} | "
                     f"{pct(r.get('gsm8k_accuracy'))} | {pct(r['call_validity'])} | "
                     f"{r['calls']} | {r['mean_turns']} | {r['seconds_per_question']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arith", type=int, default=500)
    p.add_argument("--gsm8k", type=int, default=200)
    p.add_argument("--adapter", default=None, help="the tool-tuned LoRA adapter directory")
    p.add_argument("--configs", nargs="+", default=None, choices=CONFIGS)
    p.add_argument("--tools", default="calculator", help="tool sets for the agent")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="turns per question at most")
    p.add_argument("--max-tokens", type=int, default=96, help="new tokens per turn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    configs = args.configs or [c for c in CONFIGS[:3] if args.adapter or "tuned" not in c]
    if any("tuned" in c for c in configs) and not args.adapter:
        raise LmforgeError("the tuned configurations need --adapter runs/…/adapter")
    record = {"benchmark": "agent", **machine(threads=args.threads, reps=1),
              "arith": args.arith, "gsm8k": args.gsm8k, "tools": args.tools,
              "adapter": args.adapter, "steps": args.steps, "max_tokens": args.max_tokens,
              "batch": args.batch, "bench_seed": teach.BENCH_SEED}
    models = {"base": lmforge.load("smollm2")}
    if args.adapter:
        models["tuned"] = lmforge.load("smollm2", adapter=args.adapter)
    tools = {t.name: t for t in builtin_tools(args.tools.split(","))}
    qs = questions(args.arith, args.gsm8k)
    record["rows"] = [run_config(c, models, qs, tools, args) for c in configs]
    print(markdown(record["rows"]))
    finish(record, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
