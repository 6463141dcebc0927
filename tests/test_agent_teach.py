"""agent/teach.py: generated tool-use conversations and the benchmark's disjoint questions."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from lmforge.agent import teach, teach_gsm8k
from lmforge.agent.calls import SYSTEM_HEAD, parse_calls
from lmforge.agent.tools import builtin_tools
from lmforge.errors import LmforgeError
from lmforge.eval.generated import GSM8KRecord, extract_flexible, gsm8k_exact_match
from lmforge.rag.store import Hit

NATALIA = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
           "as many clips in May. How many clips did Natalia sell altogether in April and May?",
           "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
           "<<48+24=72>>72 clips altogether in April and May.\n#### 72"}
WENG = {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes "
        "of babysitting. How much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she "
        "earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}
ROUNDED = {"question": "Split 100 cookies among 3 friends.",  # the calculator says 33.33333…
           "answer": "Each gets 100/3 = <<100/3=33.33>>33.33 cookies.\n#### 33.33"}


def _gsm8k_file(path, records=(NATALIA, WENG, ROUNDED)):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def gsm8k_train(tmp_path_factory):
    return _gsm8k_file(tmp_path_factory.mktemp("gsm8k") / "train.jsonl")


@pytest.fixture(scope="module")
def convs(gsm8k_train) -> list[dict]:
    return teach.conversations(400, seed=3, gsm8k_train=gsm8k_train)


def test_same_seed_same_conversations_other_seed_others(gsm8k_train):
    def run(seed):
        return teach.conversations(50, seed=seed, gsm8k_train=gsm8k_train)
    assert run(7) == run(7)
    assert run(7) != run(8)
    assert teach.arithmetic_questions(20) == teach.arithmetic_questions(20)


def test_every_family_appears_and_roles_alternate(convs):
    assert {c["family"] for c in convs} == set(teach.MIX)
    for c in convs:
        roles = [m["role"] for m in c["messages"]]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        assert c["messages"][0]["content"].startswith(SYSTEM_HEAD)


def test_every_call_parses_and_validates_against_its_listed_tools(convs):
    tools = {t.name: t for t in builtin_tools()}
    for c in convs:
        listed = {json.loads(line)["name"]
                  for line in c["messages"][0]["content"].split("Tools:\n")[1].splitlines()}
        for i, m in enumerate(c["messages"]):
            if m["role"] != "assistant":
                continue
            parsed = parse_calls(m["content"])
            assert not parsed.errors
            last = i == len(c["messages"]) - 1
            assert bool(parsed.calls) != last  # calls in every turn but the answer
            for call in parsed.calls:
                assert call.name in listed
                tools[call.name].validate(call.arguments)
                assert c["messages"][i + 1]["role"] == "tool"


def test_calculator_observations_are_exact(convs):
    checked = 0
    for c in convs:
        msgs = c["messages"]
        for m, obs in zip(msgs, msgs[1:], strict=False):
            calls = parse_calls(m["content"]).calls if m["role"] == "assistant" else []
            if c["family"] == "gsm8k":  # GSM8K's own expressions (0.2 x 50): tested below
                continue
            if calls and calls[0].name == "calculator":
                value = _fraction_eval(calls[0].arguments["expression"])
                shown = obs["content"].removesuffix(" (rounded)")
                assert Fraction(shown) == value if shown == obs["content"] \
                    else abs(float(shown) - value) < 1e-9 * max(1, abs(value))
                checked += 1
    assert checked > 100


def _fraction_eval(expression: str) -> Fraction:
    """The exact value of a generated expression (digits, + - * /, parentheses), by Python
    on Fractions: an oracle independent of the calculator's parser."""
    assert re.fullmatch(r"[\d.+\-*/() ]+", expression)
    return eval(re.sub(r"\d+(?:\.\d+)?", lambda m: f"Fraction('{m.group()}')", expression))


def test_search_and_csv_observations_are_the_real_tools_output(tmp_path):
    rng = teach.random.Random(5)
    header, rows = ("region", "units"), [("north", 12), ("east", 3405), ("west", 77)]
    (tmp_path / "sales.csv").write_text("region,units\nnorth,12\neast,3405\nwest,77\n")
    (read_file,) = builtin_tools(["files"], allow=[tmp_path])
    shown = str(tmp_path / "sales.csv")
    assert read_file(path=shown) == teach.csv_observation(shown, header, rows)

    passages = [("aldmoor.md", "The town of Aldmoor was founded in 1204."),
                ("notes_1.md", "The Brinvale library holds 5120 books.")]

    class Retriever:  # the real search tool over fixed hits
        def search(self, query, k, mode):
            return [Hit(f"{s}#0", 1.0, t, s) for s, t in passages][:k]

    (search,) = builtin_tools(["search"], retriever=Retriever())
    assert search(query="Aldmoor") == teach.search_observation(passages)
    assert teach.document_question(rng).rounds[0][1][0].startswith("[1] ")


def test_arithmetic_answers_are_python_integer_arithmetic():
    python = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    rng = teach.random.Random(0)
    for _ in range(300):
        t = teach.arithmetic(rng)
        a, op, b = t.rounds[0][0][0].arguments["expression"].split()
        result = python[op](int(a), int(b))
        assert t.rounds[0][1] == [str(result)]
        assert t.answer.endswith(f"= {result}.")


def test_exact_division_and_operand_sizes():
    for q in teach.arithmetic_questions(300, seed=1, split="train") + \
            teach.arithmetic_questions(300):
        assert 10 <= q.b < 10 ** 5 and 10 <= q.a < 10 ** 5
        if q.op == "/":
            assert q.a % q.b == 0


def test_benchmark_and_training_arithmetic_are_disjoint(convs):
    bench = teach.arithmetic_questions(500)
    assert all(teach.in_bench(q.a, q.op, q.b) for q in bench)
    keys = {(q.a, q.op, q.b) for q in bench}
    train = teach.arithmetic_questions(3000, seed=0, split="train")
    assert not any(teach.in_bench(q.a, q.op, q.b) for q in train)
    assert not keys & {(q.a, q.op, q.b) for q in train}
    texts = {q.text for q in bench}
    assert not texts & {c["messages"][1]["content"] for c in convs}


def test_direct_conversations_call_no_tool(convs):
    for c in convs:
        if c["family"] == "direct":
            assert len(c["messages"]) == 3 and not parse_calls(c["messages"][2]["content"]).calls


def test_mix_and_jsonl(tmp_path):
    rows = teach.conversations(20, seed=0, mix=teach.parse_mix("arithmetic=1"))
    assert {r["family"] for r in rows} == {"arithmetic"}
    path = teach.write_jsonl(rows, tmp_path / "d" / "train.jsonl")
    from lmforge.adapt.sft import read_conversations
    assert len(read_conversations(path)) == 20
    with pytest.raises(LmforgeError, match="unknown conversation families"):
        teach.conversations(5, mix={"poetry": 1.0})
    with pytest.raises(LmforgeError, match="family=weight"):
        teach.parse_mix("arithmetic")


# ---------------------------------------------------------------- the gsm8k family

def test_gsm8k_solution_becomes_calls_with_the_calculators_observations(gsm8k_train):
    msgs = teach.to_messages(teach_gsm8k.load_problems(gsm8k_train)[0], ("calculator",))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant",
                                         "tool", "assistant"]
    assert msgs[1]["content"] == NATALIA["question"]
    first, second = parse_calls(msgs[2]["content"]), parse_calls(msgs[4]["content"])
    assert first.content == "Natalia sold 48/2 ="
    assert [(c.name, c.arguments) for c in first.calls] == [("calculator",
                                                            {"expression": "48/2"})]
    assert second.content == "24 clips in May.\nNatalia sold 48+24 ="
    assert second.calls[0].arguments == {"expression": "48+24"}
    assert [msgs[3]["content"], msgs[5]["content"]] == ["24", "72"]
    final = msgs[6]["content"]
    assert final == "72 clips altogether in April and May.\nThe answer is 72."
    record = GSM8KRecord(**NATALIA)
    assert gsm8k_exact_match(extract_flexible(final), record) == 1.0


def test_gsm8k_problems_the_calculator_does_not_reproduce_are_skipped():
    assert teach_gsm8k.solution_turns(ROUNDED["question"], ROUNDED["answer"]) is None
    wrong = "So 2+2 = <<2+2=5>>5.\n#### 5"
    not_arithmetic = "She pays 20% = <<20%*50=10>>10.\n#### 10"
    for answer in (wrong, not_arithmetic, "No computation here.\n#### 4", "<<2+2=4>>4"):
        assert teach_gsm8k.solution_turns("q", answer) is None
    weng = teach_gsm8k.solution_turns(WENG["question"], WENG["answer"])
    assert [r[1] for r in weng.rounds] == [["0.2"], ["10"]]  # "0.2 x 50": x read as times


def test_gsm8k_family_is_deterministic_and_cycles_through_the_problems(gsm8k_train):
    def run(seed):
        return teach.conversations(30, seed, {"gsm8k": 1.0}, gsm8k_train)
    assert run(0) == run(0) and run(0) != run(1)
    users = [c["messages"][1]["content"] for c in run(0)]
    assert set(users[:2]) == {NATALIA["question"], WENG["question"]}  # each once a pass


def test_gsm8k_test_split_is_never_read(tmp_path, monkeypatch):
    train = _gsm8k_file(tmp_path / "train.jsonl")
    _gsm8k_file(tmp_path / "test.jsonl")
    opened = []
    real_open = teach_gsm8k.Path.open

    def spy(self, *args, **kwargs):
        opened.append(self.name)
        return real_open(self, *args, **kwargs)
    monkeypatch.setattr(teach_gsm8k.Path, "open", spy)
    teach.conversations(20, seed=0, gsm8k_train=train)
    assert [n for n in opened if n.endswith(".jsonl")] == ["train.jsonl"]
    with pytest.raises(LmforgeError, match="test split, which is the benchmark"):
        teach_gsm8k.load_problems(tmp_path / "test.jsonl")


def test_gsm8k_file_errors_and_a_mix_without_it(tmp_path):
    with pytest.raises(LmforgeError, match="--gsm8k-train"):
        teach.conversations(5, seed=0, gsm8k_train=tmp_path / "missing.jsonl")
    rows = teach.conversations(5, 0, {"arithmetic": 1.0}, tmp_path / "missing.jsonl")
    assert len(rows) == 5  # the file is read only when the gsm8k family has weight
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(LmforgeError, match="bad.jsonl:1"):
        teach_gsm8k.load_problems(tmp_path / "bad.jsonl")


def test_jsonl_escapes_line_breaks_that_splitlines_sees(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a\u2028b\x85c"}]}] * 2
    text = teach.write_jsonl(rows, tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == rows
