"""Tool-use training conversations, generated from a seed, and the benchmark's question set.

    convs = conversations(2000, seed=0)       # [{"messages": [system, user, assistant, tool, …]}]
    write_jsonl(convs, "runs/agent-data/train.jsonl")        # what `lmforge finetune` reads
    questions = arithmetic_questions(500, seed=BENCH_SEED, split="bench")

Design choices:
- Every conversation is in the documented text format of `agent/calls.py`: the system message
  is `system_prompt(specs)` of a random subset of the built-in tools that always holds the
  needed one (so the model reads the tool list instead of memorising one), an assistant call
  turn is `render_calls`, each result a `{"role": "tool"}` message whose content is what the
  real tool returns (`observe` runs the built-in calculator and python sandbox; CSV files and
  search hits go through perception's `summarize_csv` and memory's `format_passages`, the
  functions the read_file and search tools return), and the answer restates the result and
  ends with the number ("4821 × 937 = 4517277."), so a last-number extractor reads it.
- Families (weights in `MIX`): arithmetic (2–5-digit operands, + − × ÷, ÷ exact: a = b·c,
  varied phrasings), unit conversions (the factor in the expression), small word problems
  (one combined expression or two calls), document questions through `search`, CSV questions
  through `read_file` then the calculator, computations through `python`, and questions that
  need no tool (greetings, simple facts), answered directly so the model does not call a tool
  for everything, and GSM8K train solutions with their `<<48/2=24>>` annotations as calculator
  calls (`agent/teach_gsm8k.py`; read from `--gsm8k-train`, the test split never).
- Train and benchmark arithmetic are disjoint by construction: a problem (a, op, b) belongs
  to the benchmark when the first byte of sha256("a op b") is below `BENCH_SHARE`·256, and the
  training generator rejects every such problem, whatever the seeds and counts.
- Everything draws from one `random.Random` seeded by a string naming the split and seed, so
  the same arguments give the same conversations on every run and Python version.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.agent.calls import ToolCall, render_calls, system_prompt
from lmforge.agent.teach_gsm8k import GSM8K_TRAIN, load_problems, sampler
from lmforge.errors import LmforgeError
from lmforge.io import atomic_write_text

BENCH_SEED = 2212
BENCH_SHARE = 1 / 16  # share of all (a, op, b) problems reserved for the benchmark
OPS = {"+": ("plus", "+", "+"), "-": ("minus", "-", "−"), "*": ("times", "*", "×"),
       "/": ("divided by", "/", "÷")}
WORDS = {"+": ("plus", "added to", "and"), "-": ("minus", "less"),
         "*": ("times", "multiplied by"), "/": ("divided by", "over")}
ASK = ("What is {q}?", "Compute {q}.", "{q} = ?", "Calculate {q}.", "What's {q}?",
       "Please work out {q} for me.", "I need {q}.", "How much is {q}?", "Solve {q}",
       "Quick question: what is {q}?", "Can you tell me {q}?", "{q}")
_RAW_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}
TOOL_NAMES = ("calculator", "python", "search", "read_file", "remember", "recall")


@dataclass(frozen=True)
class Arith:
    """One arithmetic problem: operands, operator ("+", "-", "*", "/") and its phrasing."""

    a: int
    op: str
    b: int
    text: str

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def answer(self) -> int:
        a, b = self.a, self.b  # "/" only ever divides a multiple: a // b is exact
        return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[self.op]


def in_bench(a: int, op: str, b: int) -> bool:
    """Whether problem (a, op, b) is reserved for the benchmark (module docstring)."""
    digest = hashlib.sha256(f"{a} {op} {b}".encode()).digest()
    return digest[0] < BENCH_SHARE * 256


def _digits(rng: random.Random) -> int:
    d = rng.randint(2, 5)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)


def _arith(rng: random.Random, bench: bool) -> Arith:
    """A problem on the wanted side of the train/benchmark split, phrased at random."""
    while True:
        op = rng.choice("+-*/")
        if op == "/":  # exact division: a = b·c
            b, c = _digits(rng), _digits(rng)
            a = b * c
            if a >= 10 ** 5:
                continue
        else:
            a, b = _digits(rng), _digits(rng)
        if in_bench(a, op, b) == bench:
            break
    style = rng.random()
    if style < 0.4:
        q = f"{a} {rng.choice(WORDS[op])} {b}"
    else:
        gap = " " if style < 0.8 else ""
        q = f"{a}{gap}{rng.choice(OPS[op][1:])}{gap}{b}"
    return Arith(a, op, b, rng.choice(ASK).format(q=q))


def arithmetic_questions(n: int, seed: int = BENCH_SEED, split: str = "bench") -> list[Arith]:
    """`n` problems of 2–5-digit operands; `split="bench"` draws only benchmark problems,
    any other split only training ones."""
    rng = random.Random(f"agent-arith:{split}:{seed}")
    return [_arith(rng, split == "bench") for _ in range(n)]


# ---------------------------------------------------------------- observations

def observe(name: str, arguments: dict) -> str:
    """What the built-in tool `name` returns for these arguments (calculator, python)."""
    from lmforge.agent.tools import builtin_tools

    (t,) = builtin_tools([name])
    return t(**t.validate(arguments))


# ---------------------------------------------------------------- conversation families

@dataclass
class Turns:
    """A family's output: the user text, the rounds of calls with their observations, the
    final answer, the tools it needs, and the text written before each round's calls."""

    user: str
    rounds: list[tuple[list[ToolCall], list[str]]]
    answer: str
    needs: tuple[str, ...] = ()
    thoughts: list[str] = field(default_factory=list)


def _calc(expression: str) -> tuple[list[ToolCall], list[str]]:
    args = {"expression": expression}
    return [ToolCall("calculator", args)], [observe("calculator", args)]


def arithmetic(rng: random.Random) -> Turns:
    p = _arith(rng, bench=False)
    call = _calc(p.expression)
    return Turns(p.text, [call], f"{p.a} {OPS[p.op][2]} {p.b} = {call[1][0]}.", ("calculator",))


UNITS = [  # (from, to, expression template, phrasing of the unit names)
    ("kilometres", "miles", "{v} * 0.621371"), ("miles", "kilometres", "{v} * 1.609344"),
    ("kilograms", "pounds", "{v} * 2.20462"), ("pounds", "kilograms", "{v} * 0.453592"),
    ("metres", "feet", "{v} * 3.28084"), ("feet", "metres", "{v} * 0.3048"),
    ("inches", "centimetres", "{v} * 2.54"), ("litres", "US gallons", "{v} * 0.264172"),
    ("degrees Celsius", "degrees Fahrenheit", "{v} * 9 / 5 + 32"),
    ("degrees Fahrenheit", "degrees Celsius", "({v} - 32) * 5 / 9"),
    ("hours", "seconds", "{v} * 3600"), ("days", "minutes", "{v} * 1440"),
]
UNIT_ASK = ("Convert {v} {f} to {t}.", "How many {t} is {v} {f}?", "{v} {f} in {t}?",
            "What is {v} {f} in {t}?", "I have {v} {f}. How much is that in {t}?")


def units(rng: random.Random) -> Turns:
    f, t, template = rng.choice(UNITS)
    v = rng.choice([rng.randint(2, 999), round(rng.uniform(1, 500), 1)])
    call = _calc(template.format(v=v))
    value = call[1][0].removesuffix(" (rounded)")  # the calculator marks inexact decimals
    return Turns(rng.choice(UNIT_ASK).format(v=v, f=f, t=t), [call],
                 f"{v} {f} is about {value} {t}." if value != call[1][0]
                 else f"{v} {f} is {value} {t}.", ("calculator",))


NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi",
         "Lena", "Mateo", "Nina", "Omar", "Priya")
ITEMS = ("apples", "books", "pencils", "stickers", "cookies", "marbles", "bottles", "cards")


def word_problem(rng: random.Random) -> Turns:
    """A two-operation story: one call with the whole expression, or one call per step."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n, m, k = rng.randint(3, 60), rng.randint(2, 40), rng.randint(1, 30)
    kind = rng.randrange(4)
    if kind == 0:
        user = (f"{name} buys {n} boxes of {item} with {m} {item} in each box, then gives away "
                f"{k} {item}. How many {item} does {name} have now?")
        steps, whole, end = [f"{n} * {m}", "{r} - " + str(k)], f"{n} * {m} - {k}", \
            f"{name} has {{r}} {item} now."
    elif kind == 1:
        user = (f"A ticket costs ${m}. {name} buys {n} tickets and pays a ${k} booking fee. "
                "How much does {name} pay in total?").replace("{name}", name)
        steps, whole, end = [f"{n} * {m}", "{r} + " + str(k)], f"{n} * {m} + {k}", \
            f"{name} pays ${{r}} in total."
    elif kind == 2:
        total = n * m
        user = (f"{name} has {total} {item} and shares them equally among {n} friends, then "
                f"each friend gets {k} more. How many {item} does each friend have?")
        steps, whole, end = [f"{total} / {n}", "{r} + " + str(k)], f"{total} / {n} + {k}", \
            f"Each friend has {{r}} {item}."
    else:
        user = (f"{name} reads {m} pages a day for {n} days and then {k} pages more. How many "
                "pages did they read?")
        steps, whole, end = [f"{m} * {n}", "{r} + " + str(k)], f"{m} * {n} + {k}", \
            "They read {r} pages."
    if rng.random() < 0.6:
        call = _calc(whole)
        return Turns(user, [call], end.format(r=call[1][0]), ("calculator",))
    first = _calc(steps[0])
    second = _calc(steps[1].format(r=first[1][0]))
    return Turns(user, [first, second], end.format(r=second[1][0]), ("calculator",))


PLACES = ("Aldmoor", "Brinvale", "Corrick", "Dunhollow", "Eastmere", "Farrowby", "Glenrock",
          "Harlow Bay", "Istrelle", "Juniper Falls", "Kestrel Point", "Lornwick")
FACTS = [  # (document sentence, question, answer sentence) with {p} the place, {x} a number
    ("The town of {p} was founded in {x}.", "When was {p} founded?", "{p} was founded in {x}."),
    ("{p} has a population of {x} people.", "How many people live in {p}?",
     "{p} has {x} inhabitants."),
    ("The bridge in {p} is {x} metres long.", "How long is the bridge in {p}?",
     "The bridge in {p} is {x} metres long, so its length is {x}."),
    ("The {p} library holds {x} books.", "How many books does the {p} library hold?",
     "The {p} library holds {x} books."),
    ("The annual budget of {p} is {x} thousand euros.", "What is the annual budget of {p}?",
     "The annual budget of {p} is {x} thousand euros, i.e. {x}."),
]


def search_observation(passages: list[tuple[str, str]]) -> str:
    """The search tool's observation of these (source, text) hits, in its own layout."""
    from lmforge.agent.memory import format_passages
    from lmforge.rag.store import Hit

    return format_passages([Hit(f"{src}#0", 1.0, text, src) for src, text in passages])


def document_question(rng: random.Random) -> Turns:
    place = rng.choice(PLACES)
    fact, question, answer = rng.choice(FACTS)
    x = rng.randint(1100, 2020) if "founded" in fact else rng.randint(120, 98000)
    others = [f.format(p=rng.choice(PLACES), x=rng.randint(100, 9999))
              for f, _, _ in rng.sample(FACTS, 2)]
    passages = [(f"{place.lower().replace(' ', '_')}.md", fact.format(p=place, x=x))]
    passages += [(f"notes_{i}.md", o) for i, o in enumerate(others, 1)]
    rng.shuffle(passages)
    q = question.format(p=place)
    call = [ToolCall("search", {"query": q.rstrip("?")})], [search_observation(passages)]
    return Turns(q, [call], answer.format(p=place, x=x), ("search",))


COLUMNS = {"sales.csv": ("region", "units"), "expenses.csv": ("month", "amount"),
           "scores.csv": ("student", "score")}
KEYS = {"region": ("north", "south", "east", "west", "centre"),
        "month": ("Jan", "Feb", "Mar", "Apr", "May"), "student": NAMES[:5]}


def csv_observation(path: str, header: tuple[str, str], rows: list[tuple[str, int]]) -> str:
    """The read_file observation of this CSV file (perception's summary of its text)."""
    from lmforge.agent.perception import summarize_csv

    text = "\n".join([",".join(header)] + [f"{k},{v}" for k, v in rows]) + "\n"
    return summarize_csv(path, text)


def csv_question(rng: random.Random) -> Turns:
    path, header = rng.choice(list(COLUMNS.items()))
    rows = [(k, rng.randint(10, 9999)) for k in rng.sample(KEYS[header[0]], rng.randint(3, 5))]
    read = [ToolCall("read_file", {"path": path})], [csv_observation(path, header, rows)]
    if rng.random() < 0.5:
        user = f"What is the total {header[1]} in {path}?"
        calc = _calc(" + ".join(str(v) for _, v in rows))
        return Turns(user, [read, calc], f"The total {header[1]} is {calc[1][0]}.",
                     ("read_file", "calculator"))
    key, value = rng.choice(rows)
    user = f"In {path}, what is the {header[1]} for {key}?"
    return Turns(user, [read], f"The {header[1]} for {key} is {value}.", ("read_file",))


PY_TASKS = [  # (question, code, value of n → the printed answer)
    ("What is the sum of the integers from 1 to {n}?", "print(sum(range(1, {n} + 1)))",
     lambda n: n * (n + 1) // 2),
    ("What is the sum of the squares of 1 to {n}?", "print(sum(i * i for i in range(1, {n} + 1)))",
     lambda n: n * (n + 1) * (2 * n + 1) // 6),
    ("How many primes are there below {n}?",
     "print(sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, {n})))",
     lambda n: sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, n))),
    ("How many multiples of 7 are there between 1 and {n}?",
     "print(len([k for k in range(1, {n} + 1) if k % 7 == 0]))", lambda n: n // 7),
]


def python_question(rng: random.Random) -> Turns:
    question, code, value = rng.choice(PY_TASKS)
    n = rng.randint(20, 2000)
    args = {"code": code.format(n=n)}
    call = [ToolCall("python", args)], [observe("python", args)]
    return Turns(question.format(n=n), [call], f"The answer is {value(n)}.", ("python",))


DIRECT = [
    ("Hi!", "Hello! How can I help you today?"), ("Hello there", "Hi! What can I do for you?"),
    ("Thanks, that helps.", "You're welcome!"), ("Who are you?", "I am a helpful assistant."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What colour is the sky on a clear day?", "It is blue."),
    ("Write a haiku about rain.", "Soft rain on the roof,\nthe garden drinks quietly,\n"
     "puddles hold the sky."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("What is the opposite of hot?", "Cold."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many days are in a week?", "There are 7 days in a week."),
    ("What is 2 + 2?", "2 + 2 = 4."), ("Give me a synonym for happy.", "Joyful."),
    ("What language is spoken in Brazil?", "Portuguese is spoken in Brazil."),
    ("Tell me a fun fact.", "Octopuses have three hearts."),
]


def direct(rng: random.Random) -> Turns:
    user, answer = rng.choice(DIRECT)
    return Turns(user, [], answer)


MIX: dict[str, tuple[float, Callable[[random.Random], Turns] | None]] = {
    "arithmetic": (0.30, arithmetic), "units": (0.07, units), "word": (0.10, word_problem),
    "docs": (0.06, document_question), "csv": (0.05, csv_question),
    "python": (0.03, python_question), "direct": (0.04, direct),
    "gsm8k": (0.35, None)}  # bound to the GSM8K train file by `conversations`


def tool_specs(names: tuple[str, ...]) -> list[dict]:
    """The built-in tools' OpenAI specs, in `TOOL_NAMES` order."""
    from lmforge.agent.tools import builtin_tools

    sets = {"read_file": "files", "remember": "memory", "recall": "memory"}
    tools = {t.name: t for t in builtin_tools(dict.fromkeys(sets.get(n, n) for n in names))}
    return [tools[n].spec() for n in TOOL_NAMES if n in names]


def _tool_set(rng: random.Random, needs: tuple[str, ...]) -> tuple[str, ...]:
    """The needed tools plus a random few others (a third of the time exactly the needed)."""
    extra = [] if rng.random() < 0.33 else rng.sample(TOOL_NAMES, rng.randint(1, 3))
    return tuple(n for n in TOOL_NAMES if n in needs or n in extra) or ("calculator",)


def to_messages(turns: Turns, names: tuple[str, ...]) -> list[dict]:
    """The conversation in the documented format (module docstring)."""
    msgs = [{"role": "system", "content": system_prompt(tool_specs(names))},
            {"role": "user", "content": turns.user}]
    for i, (calls, observations) in enumerate(turns.rounds):
        thought = turns.thoughts[i] if i < len(turns.thoughts) else ""
        msgs.append({"role": "assistant", "content": render_calls(calls, thought)})
        msgs += [{"role": "tool", "content": o} for o in observations]
    msgs.append({"role": "assistant", "content": turns.answer})
    return msgs


def conversations(n: int, seed: int = 0, mix: dict[str, float] | None = None,
                  gsm8k_train: str | Path = GSM8K_TRAIN) -> list[dict]:
    """`n` training conversations `{"messages": [...], "family": name}` from `seed`; the
    gsm8k family (when its weight is not 0) reads `gsm8k_train`."""
    weights = mix or {k: w for k, (w, _) in MIX.items()}
    unknown = sorted(set(weights) - set(MIX))
    if unknown:
        raise LmforgeError(f"unknown conversation families {unknown}; choose from "
                           f"{', '.join(MIX)}")
    families = {k: f for k, (_, f) in MIX.items() if f is not None}
    if weights.get("gsm8k", 0) > 0:
        families["gsm8k"] = sampler(load_problems(gsm8k_train),
                                    random.Random(f"agent-gsm8k:{seed}"))
    rng = random.Random(f"agent-train:{seed}")
    names = list(weights)
    out = []
    for _ in range(n):
        family = rng.choices(names, [weights[k] for k in names])[0]
        turns = families[family](rng)
        out.append({"messages": to_messages(turns, _tool_set(rng, turns.needs)),
                    "family": family})
    return out


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Rows as JSONL (one `{"messages": …}` a line), written atomically. The characters that
    `str.splitlines` breaks at but JSON leaves raw (U+0085, U+2028, U+2029: GSM8K has some)
    are escaped, so a reader that splits the file into lines sees one row a line."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False).translate(_RAW_BREAKS)
                                 + "\n" for r in rows))
    return p


def parse_mix(text: str) -> dict[str, float]:
    """`"arithmetic=0.5,direct=0.1"` → {family: weight}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise LmforgeError(f"--mix {item!r}: write family=weight, e.g. arithmetic=0.5"
                               ) from None
        if not eq:
            raise LmforgeError(f"--mix {item!r}: write family=weight, e.g. arithmetic=0.5")
    return out
