"""Tool use by SmolLM2: accuracy alone and as an agent, tool-call validity, steps and time.

    python benchmarks/agent.py --adapter runs/smollm2-tools-lora/adapter          # full run
    python benchmarks/agent.py --arith 20 --gsm8k 0 --configs alone agent-base    # quick check

Questions: `--arith` arithmetic problems of `agent/teach.py` (2–5-digit operands, + − × ÷ with
exact quotients, varied phrasings) drawn with `teach.BENCH_SEED` from the benchmark side of
the hash split, so none is a training problem; `--gsm8k` GSM8K test problems in file order
(`../shared/data/gsm8k/test.jsonl`).

Configurations (`--configs`):
- `alone`: the model in a plain chat (SmolLM2's default system prompt), no tools, up to
  ALONE_TOKENS new tokens.
- `agent-base`, `agent-tuned` (needs `--adapter`): the agent loop with the tools of `--tools`
  listed by `calls.system_prompt`, on the base model or the tool-tuned adapter;
  `…-constrained` adds `agent/constrain.py`'s `tool_call_processor` (calls decoded within
  the tools' JSON schemas).
Every configuration decodes greedily, at most `--max-tokens` per turn. The agent is
`agent/loop.py`'s `run_agents` with an `LLMBrain`: the `--batch` questions advance together,
one generation batch per round; each turn's calls are run and their observations appended (a
malformed or invalid call becomes an error observation) until a turn has no call or `--steps`
turns with calls are used. The answer is the last number of the final turn (the last turn
when the step limit is hit); arithmetic is right when it equals the exact result, GSM8K by
the harness's normalisation against the gold number (its flexible extraction).

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
from lmforge.agent.calls import parse_calls  # noqa: E402
from lmforge.agent.loop import AgentResult, LLMBrain, run_agents  # noqa: E402
from lmforge.agent.tools import builtin_tools  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.eval.generated import extract_flexible, gsm8k_exact_match, load_gsm8k  # noqa: E402
from lmforge.generate.config import GenerationConfig  # noqa: E402

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
    """One question's run, as the figures need it."""

    answer: str
    turns: int
    calls: int = 0
    valid: int = 0
    messages: list[dict] = field(default_factory=list)


class RoundBrain(LLMBrain):
    """`LLMBrain` with, when constrained, a fresh `tool_call_processor` for every round's
    batch (a processor keeps the state of the rows it has seen)."""

    def __init__(self, lm, config: GenerationConfig, specs: list[dict] | None) -> None:
        super().__init__(lm, config)
        self.specs = specs

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        if self.specs is not None:
            from lmforge.agent.constrain import tool_call_processor

            self.processors = [tool_call_processor(self.lm.tokenizer, self.specs)]
        return super().complete(conversations)


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


def episode(result: AgentResult, tools: dict) -> Episode:
    """Turns, call blocks and valid calls (a listed tool whose schema accepts the arguments)
    of one agent run; the answer is its last assistant turn."""
    turns = [m["content"] for m in result.messages if m["role"] == "assistant"]
    ep = Episode(result.answer if result.answer is not None else (turns or [""])[-1],
                 len(turns), messages=result.messages)
    for text in turns:
        parsed = parse_calls(text)
        ep.calls += len(parsed.calls) + len(parsed.errors)
        ep.valid += sum(c.name in tools and _accepts(tools[c.name], c.arguments)
                        for c in parsed.calls)
    return ep


def _accepts(tool, arguments: dict) -> bool:
    try:
        tool.validate(arguments)
    except LmforgeError:
        return False
    return True


def agent_batch(brain: RoundBrain, qs: list[Question], tools: dict, args) -> list[Episode]:
    """One batch of questions through `run_agents`: one generation batch per round."""
    results = run_agents(brain, [q.text for q in qs], list(tools.values()), args.steps)
    return [episode(r, tools) for r in results]


def alone_batch(lm, qs: list[Question]) -> list[Episode]:
    config = GenerationConfig(max_tokens=ALONE_TOKENS, temperature=0.0)
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": q.text}])
               for q in qs]
    return [Episode(c.text, 1) for c in lm.engine.generate(prompts, config)]


def run_config(name: str, models: dict, qs: list[Question], tools: dict, args) -> dict:
    lm = models["tuned" if "tuned" in name else "base"]
    specs = [t.spec() for t in tools.values()] if name.endswith("constrained") else None
    brain = RoundBrain(lm, GenerationConfig(max_tokens=args.max_tokens, temperature=0.0),
                       specs)
    eps: list[Episode] = []
    t0 = time.perf_counter()
    for start in range(0, len(qs), args.batch):
        chunk = qs[start:start + args.batch]
        eps += alone_batch(lm, chunk) if name == "alone" else \
            agent_batch(brain, chunk, tools, args)
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
    row["examples"] = [{"question": q.text, "messages": e.messages, "final": e.answer}
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
    p.add_argument("--steps", type=int, default=8,
                   help="turns with calls per question at most (GSM8K solutions use up to 9)")
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
