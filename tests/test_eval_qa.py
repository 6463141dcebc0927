"""Generation-scored task building blocks: SQuAD / CMRC 2018 metrics and loaders, GPT-3
arithmetic, GSM8K extraction. Expected values are worked out by hand from the official
scripts' rules (evaluate-v1.1.py, cmrc2018_evaluate.py, the harness's gsm8k.yaml)."""

import random

import pytest
from conftest import SHARED_DATA as DATA
from hypothesis import given
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.eval.generated import (
    GPT3_ARITHMETIC,
    INVALID,
    ArithmeticProblem,
    GSM8KRecord,
    arithmetic_correct,
    arithmetic_problems,
    arithmetic_prompt,
    extract_flexible,
    extract_strict,
    first_integer,
    gsm8k_exact_match,
    gsm8k_fewshot,
    gsm8k_prompt,
    load_gsm8k,
    normalize_number,
)
from lmforge.eval.qa import (
    QARecord,
    cmrc_exact_match,
    cmrc_f1,
    exact_match,
    f1,
    find_lcs,
    load_cmrc2018,
    load_squad,
    mixed_segmentation,
    normalize_answer,
    qa_prompt,
    remove_punctuation,
)

# (prediction, ground truths, EM, F1), each worked out by hand.
SQUAD_CASES = [
    ("Denver Broncos", ["Denver Broncos", "Broncos"], 1.0, 1.0),
    ("the Denver Broncos.", ["Denver Broncos"], 1.0, 1.0),  # article and period dropped
    ("FEBRUARY 7, 2016", ["February 7, 2016"], 1.0, 1.0),  # case and comma
    # P = 2/3, R = 1 → F1 = 2·(2/3)/(5/3) = 0.8
    ("Denver Broncos won", ["the Denver Broncos"], 0.0, 0.8),
    # best of 2/3 ("carolina panthers"), 0 ("panthers"), 1/2 ("carolina panthers team")
    ("Carolina", ["Carolina Panthers", "Panthers", "the Carolina Panthers team"], 0.0, 2 / 3),
    # the hyphen is deleted, not spaced: "santaclara california" vs "santa clara california",
    # P = 1/2, R = 1/3 → F1 = 0.4
    ("Santa-Clara, California", ["Santa Clara, California"], 0.0, 0.4),
    # "the" inside "theatre" is no article; the standalone "an" and "the" go
    ("Theatre an the", ["theatre"], 1.0, 1.0),
    # the overlap is a multiset: min(3, 2) = 2 → P = 2/3, R = 1 → 0.8
    ("the the cat cat cat", ["cat cat"], 0.0, 0.8),
    # the en dash is not in string.punctuation: "24–10" vs "2410"
    ("24–10", ["24-10"], 0.0, 0.0),
    ("", ["Denver Broncos"], 0.0, 0.0),
    ("a an the", ["Broncos"], 0.0, 0.0),  # normalises to nothing
]


@pytest.mark.parametrize("prediction, golds, em, f1_value", SQUAD_CASES)
def test_squad_metrics_match_hand_values(prediction, golds, em, f1_value):
    assert exact_match(prediction, golds) == em
    assert f1(prediction, golds) == pytest.approx(f1_value)


def test_squad_normalize_answer_steps():
    assert normalize_answer("  The Denver\tBroncos!! ") == "denver broncos"
    assert normalize_answer("A.B.C.") == "abc"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_squad_needs_a_ground_truth():
    with pytest.raises(LmforgeError, match="no gold answers"):
        f1("x", [])


@given(st.text())
def test_normalize_answer_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert exact_match(text, [text]) == 1.0


@given(st.text())
def test_f1_of_itself_is_one_unless_empty(text):
    assert f1(text, [text]) == (1.0 if normalize_answer(text) else 0.0)


# (prediction, ground truths, EM, F1) for CMRC 2018, by hand.
CMRC_CASES = [
    ("光荣和ω-force", ["光荣和ω-force"], 1.0, 1.0),
    # LCS 4 of 4 predicted and 7 gold segments: F1 = 2·(4/7)/(11/7) = 8/11
    ("北京大学", ["北京大学医学部"], 0.0, 8 / 11),
    # 《》 removed; 在 战 国 无 双 3 中 vs 战 国 无 双 3: LCS 5, P = 5/7, R = 1 → 5/6
    ("在《战国无双3》中", ["战国无双3"], 0.0, 5 / 6),
    ("1990年", ["一九九〇年", "1990年"], 1.0, 1.0),
    ("“星球大战”。", ["星球大战"], 1.0, 1.0),  # sp_char quotes and full stop removed
    ("", ["北京"], 0.0, 0.0),
]


@pytest.mark.parametrize("prediction, golds, em, f1_value", CMRC_CASES)
def test_cmrc_metrics_match_hand_values(prediction, golds, em, f1_value):
    assert cmrc_exact_match(prediction, golds) == em
    assert cmrc_f1(prediction, golds) == pytest.approx(f1_value)


def test_cmrc_segmentation_and_punctuation():
    assert mixed_segmentation("你好，World 2018!") == ["你", "好", "，", "world", "2018", "!"]
    # rm_punc drops only the script's sp_char marks: the ASCII "!" is not among them
    kept = mixed_segmentation("你好，World 2018!", rm_punc=True)
    assert kept == ["你", "好", "world", "2018", "!"]
    mixed = mixed_segmentation("约3.5%的U.S.人口")
    assert mixed == ["约", "3.5", "%", "的", "u.s", ".", "人", "口"]
    # "……" is one two-character entry of sp_char, so a lone "…" survives, as in the script
    assert remove_punctuation(" 好…。 ") == "好…"


def test_find_lcs_is_a_contiguous_substring():
    assert find_lcs(list("abxcd"), list("abcd")) == (list("ab"), 2)
    assert find_lcs(list("xyz"), list("abc")) == ([], 0)


@given(st.lists(st.sampled_from("ab"), max_size=8), st.lists(st.sampled_from("ab"), max_size=8))
def test_find_lcs_matches_brute_force(s1, s2):
    best = max((j - i for i in range(len(s1) + 1) for j in range(i, len(s1) + 1)
                if any(s2[k:k + j - i] == s1[i:j] for k in range(len(s2) - (j - i) + 1))),
               default=0)
    run, length = find_lcs(s1, s2)
    assert length == best == len(run)


def test_squad_loader_reads_the_official_file():
    records = load_squad(DATA / "squad", limit=3)
    assert len(records) == 3
    first = records[0]
    assert first.id == "56be4db0acb8001400a502ec" and first.title == "Super_Bowl_50"
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answers == ("Denver Broncos",) * 3
    assert all(answer in r.context for r in records for answer in r.answers)


def test_cmrc_loader_reads_the_official_file():
    records = load_cmrc2018(DATA / "cmrc2018", limit=2)
    assert [r.id for r in records] == ["DEV_0_QUERY_0", "DEV_0_QUERY_1"]
    assert records[0].answers == ("光荣和ω-force",) * 3
    assert records[0].title == "战国无双3"


@pytest.mark.parametrize("loader, name", [(load_squad, "dev-v1.1.json"),
                                          (load_cmrc2018, "cmrc2018_dev.json"),
                                          (load_gsm8k, "test.jsonl")])
def test_loaders_name_the_missing_file(tmp_path, loader, name):
    with pytest.raises(LmforgeError, match=f"not found: .*{name}.*README"):
        loader(tmp_path / "absent")


def test_qa_loader_rejects_a_non_squad_file(tmp_path):
    (tmp_path / "dev-v1.1.json").write_text('{"version": "1.1"}')
    with pytest.raises(LmforgeError, match="not a SQuAD-format"):
        load_squad(tmp_path)


def test_qa_prompt_is_the_harness_squad_format():
    record = QARecord("q1", "Super_Bowl_50", "The game was played.", "Where?", ("here",))
    assert qa_prompt(record) == ("Title: Super_Bowl_50\n\nBackground: The game was played.\n\n"
                                 "Question: Where?\n\nAnswer:")


# ---------------------------------------------------------------- arithmetic


def test_arithmetic_is_deterministic_by_seed():
    a = arithmetic_problems("plus", 3, 20, seed=7)
    assert a == arithmetic_problems("plus", 3, 20, seed=7)
    assert a != arithmetic_problems("plus", 3, 20, seed=8)
    assert a != arithmetic_problems("plus", 3, 20, seed=7, split="fewshot")
    assert arithmetic_problems("plus", 3, 5, seed=7) == a[:5]  # a prefix: --limit is stable


@pytest.mark.parametrize("name", sorted(GPT3_ARITHMETIC))
def test_arithmetic_operands_and_answers(name):
    operation, digits = GPT3_ARITHMETIC[name]
    problems = arithmetic_problems(operation, digits, 200, seed=0)
    operands = [x for p in problems for x in (p.a, p.b)]
    assert all(0 <= x < 10 ** digits for x in operands)
    assert max(operands) >= 10 ** (digits - 1)  # full d-digit numbers do occur
    for p in problems:
        expected = {"plus": p.a + p.b, "minus": p.a - p.b, "times": p.a * p.b}[operation]
        assert p.answer == expected


def test_subtraction_yields_negative_answers_scored_right():
    problems = arithmetic_problems("minus", 2, 50, seed=0)
    negative = [p for p in problems if p.answer < 0]
    assert negative
    p = negative[0]
    assert arithmetic_correct(f" {p.answer}\nQ: What is", p)
    assert not arithmetic_correct(f" {-p.answer}", p)


def test_arithmetic_prompt_is_the_gpt3_format():
    shots = [ArithmeticProblem(48, 76, "plus"), ArithmeticProblem(34, 53, "minus")]
    prompt = arithmetic_prompt(ArithmeticProblem(24, 99, "times"), shots)
    assert prompt == ("Q: What is 48 plus 76? A: 124\nQ: What is 34 minus 53? A: -19\n"
                      "Q: What is 24 times 99? A:")


@pytest.mark.parametrize("text, number", [
    (" 124", 124), (" -19\nQ: What is", -19), ("The answer is 2,376.", 2376),
    ("A: 12 plus 3", 12), ("12,34", 12), ("no number", None), ("-", None),
])
def test_first_integer(text, number):
    assert first_integer(text) == number


@given(st.integers(-10 ** 12, 10 ** 12))
def test_first_integer_round_trips(n):
    assert first_integer(f" {n} ") == n
    assert first_integer(f"{n:,}.") == n


def test_unknown_operation_is_a_clear_error():
    with pytest.raises(LmforgeError, match="unknown arithmetic operation 'divide'"):
        arithmetic_problems("divide", 2, 1)


# ---------------------------------------------------------------- GSM8K


def test_gsm8k_loader_and_gold_numbers():
    records = load_gsm8k(DATA / "gsm8k", limit=3)
    assert [r.target for r in records] == ["18", "3", "70000"]
    assert records[0].question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert len(load_gsm8k(DATA / "gsm8k")) == 1319


@pytest.mark.parametrize("text, strict, flexible", [
    ("She makes 9 * 2 = $18.\n#### 18", "18", "18"),
    ("#### 1,234.56\n\nQuestion:", "1,234.56", "1,234.56"),
    ("It loses 5 dollars.\n#### -5", "-5", "-5"),
    ("The answer is 18.", INVALID, "18."),
    ("She makes $18 a day.", INVALID, "$18"),
    ("3 apples and 5 pears", INVALID, "5"),  # one digit: only the second alternative
    ("no number at all", INVALID, INVALID),
])
def test_gsm8k_extraction(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_gsm8k_exact_match_normalises_both_sides():
    record = GSM8KRecord("q", "20 * 60 = <<20*60=1200>>1200\n#### 1,200")
    assert record.target == "1200"
    assert gsm8k_exact_match(extract_flexible("So she pays $1,200."), record) == 1.0
    assert gsm8k_exact_match(extract_strict("So she pays $1,200."), record) == 0.0
    assert gsm8k_exact_match("1200.0", record) == 0.0  # a string match, not a numeric one
    assert normalize_number("The total is #### $3.") == "3"


def test_gsm8k_prompt_is_the_harness_format():
    shots = [GSM8KRecord("One?", "1 + 0 = 1\n#### 1"), GSM8KRecord("Two?", "#### 2")]
    prompt = gsm8k_prompt(GSM8KRecord("Three?", "#### 3"), shots)
    assert prompt == ("Question: One?\nAnswer: 1 + 0 = 1\n#### 1\n\n"
                      "Question: Two?\nAnswer: #### 2\n\nQuestion: Three?\nAnswer:")


def test_gsm8k_fewshot_is_seeded_and_without_replacement():
    pool = [GSM8KRecord(str(i), f"#### {i}") for i in range(50)]
    first = gsm8k_fewshot(pool, 5, random.Random(1234))
    assert first == gsm8k_fewshot(pool, 5, random.Random(1234))
    assert len({r.question for r in first}) == 5


def test_a_prompt_longer_than_the_window_keeps_its_end(smollm2, monkeypatch):
    """The generation tasks cut a prompt that does not fit on the left, as the harness does,
    leaving room for max_tokens: the answer equals the one to the prompt's last
    window − max_tokens tokens (a 40-token window here; SmolLM2's own is 8,192)."""
    from lmforge.eval.tasks.generation import greedy_answers
    from lmforge.generate.config import GenerationConfig

    monkeypatch.setattr(smollm2.model.config, "max_seq_len", 40)
    prompt = ("The river runs past the mill, the mill grinds the corn, the corn feeds the "
              "town, and the town sends its bread down the river to the sea. " * 2
              + "Question: What does the mill grind?\nAnswer:")
    ids = smollm2.tokenizer.encode_spans([(prompt, False)])
    assert len(ids) > 40
    config = GenerationConfig(max_tokens=8, temperature=0.0, stop=["\n"])
    want = [c.text for c in smollm2.engine.generate([ids[-32:]], config)]
    assert greedy_answers(smollm2, [prompt], ["\n"], 8) == want
    with pytest.raises(LmforgeError, match="context window is 40"):
        list(smollm2.engine.generate([ids], config))
