"""Reading comprehension scored on generated answers: SQuAD v1.1 (English) and CMRC 2018
(Chinese) exact match and F1 with each data set's official rules, their loaders, and the
prompt a causal LM answers.

Design choices:
- The SQuAD metric follows the official `evaluate-v1.1.py` (Rajpurkar et al. 2016; the copy
  in allenai/bi-att-flow `squad/evaluate-v1.1.py`) line for line: normalise (lower case,
  drop `string.punctuation`, drop the articles a/an/the, collapse white space), then

      EM = [norm(pred) == norm(gold)]
      F1 = 2·P·R / (P + R),  P = |pred ∩ gold| / |pred|,  R = |pred ∩ gold| / |gold|

  over the multiset of whitespace tokens, each taking the maximum over the gold answers.
- The CMRC metric follows ymcui/cmrc2018 `squad-style-data/cmrc2018_evaluate.py` (v5): the
  text is split into Chinese characters one by one and runs of other characters as words,
  its `sp_char` punctuation list is removed, and F1 is computed from the *longest common
  substring* of the two segment lists (`find_lcs`), not from a bag of tokens. EM compares
  the strings with that punctuation removed. One deviation: the script cuts non-Chinese
  runs with `nltk.word_tokenize`, which needs downloaded model data; here a run is cut at
  white space and the punctuation at each word's edges split off, which gives nltk's
  segments for the numbers, Latin names and dates that CMRC answers contain (it differs on
  English contractions such as "don't", which nltk cuts into "do" + "n't").
- Prompts use the harness's SQuAD format (lm-evaluation-harness `lm_eval/tasks/squadv2/
  task.py`, `doc_to_text`): "Title: …\\n\\nBackground: …\\n\\nQuestion: …\\n\\nAnswer:",
  generated greedily until the first newline. CMRC has no harness task; it uses the same
  template so the two tasks differ only in data and metric.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

SQUAD_FILE = "dev-v1.1.json"
CMRC_FILE = "cmrc2018_dev.json"


@dataclass(frozen=True)
class QARecord:
    """One question of a SQuAD-format file, with all its gold answer texts (duplicates kept)."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]


# ---------------------------------------------------------------- SQuAD v1.1 (evaluate-v1.1.py)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation, applied in the script's order: lower case, remove
    punctuation, replace the articles a/an/the by a space, collapse white space.

    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0 (`exact_match_score`)."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of the normalised strings (`f1_score`): the overlap counts each token
    as often as it occurs in both (a multiset intersection); no overlap (an empty prediction
    included) scores 0.

    >>> round(squad_f1("Denver Broncos won", "the Denver Broncos"), 4)
    0.8
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_ground_truths(metric: Callable[[str, str], float], prediction: str,
                           ground_truths: Sequence[str]) -> float:
    """The best score of `prediction` against any gold answer
    (`metric_max_over_ground_truths`)."""
    if not ground_truths:
        raise LmforgeError("a QA example has no gold answers; every question needs at least one")
    return max(metric(prediction, gold) for gold in ground_truths)


def exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """SQuAD exact match of a prediction against all its gold answers."""
    return max_over_ground_truths(squad_exact_match, prediction, ground_truths)


def f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """SQuAD F1 of a prediction against all its gold answers."""
    return max_over_ground_truths(squad_f1, prediction, ground_truths)


# ---------------------------------------------------------------- CMRC 2018 (cmrc2018_evaluate.py)

# The script's `sp_char`, in its order. "……" is one entry of two characters, so a character
# loop never matches it and a lone "…" is kept, as in the script.
CMRC_PUNCTUATION = ("-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
                    "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
                    "「", "」", "（", "）", "－", "～", "『", "』")
_CMRC_PUNCT_CHARS = frozenset(p for p in CMRC_PUNCTUATION if len(p) == 1)
_CJK = re.compile("[\u4e00-\u9fa5]")  # the script's range (CJK Unified Ideographs, to 9FA5)
_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _split_run(run: str) -> list[str]:
    """Non-Chinese run → words, standing in for `nltk.word_tokenize` (see the module note):
    cut at white space, then each punctuation mark at a word's edges is its own token, so
    "3.5%" → ["3.5", "%"] and "1,000" stays whole, as nltk has them."""
    tokens: list[str] = []
    for word in run.split():
        lead, core, trail = _EDGES.match(word).groups()  # type: ignore[union-attr]
        tokens.extend([*lead, *([core] if core else []), *trail])
    return tokens


def mixed_segmentation(text: str, rm_punc: bool = False) -> list[str]:
    """Lower-cased, stripped `text` cut into segments: every Chinese character (and, when
    kept, every `sp_char` mark) alone, the runs between them as words.

    >>> mixed_segmentation("2018年CMRC，比赛", rm_punc=True)
    ['2018', '年', 'cmrc', '比', '赛']
    """
    segments: list[str] = []
    run = ""
    for char in text.lower().strip():
        if rm_punc and char in _CMRC_PUNCT_CHARS:
            continue
        if _CJK.match(char) or char in _CMRC_PUNCT_CHARS:
            segments.extend(_split_run(run))
            run = ""
            segments.append(char)
        else:
            run += char
    segments.extend(_split_run(run))
    return segments


def remove_punctuation(text: str) -> str:
    """Lower-cased, stripped `text` without the script's `sp_char` marks."""
    return "".join(ch for ch in text.lower().strip() if ch not in _CMRC_PUNCT_CHARS)


def find_lcs(s1: Sequence[str], s2: Sequence[str]) -> tuple[Sequence[str], int]:
    """The longest common *contiguous* run of `s1` and `s2` and its length, by the script's
    dynamic programme m[i+1][j+1] = m[i][j] + 1 when s1[i] == s2[j]; the first longest run
    in `s1` wins ties."""
    prev = [0] * (len(s2) + 1)
    best, end = 0, 0
    for i, a in enumerate(s1):
        row = [0] * (len(s2) + 1)
        for j, b in enumerate(s2):
            if a == b:
                row[j + 1] = prev[j] + 1
                if row[j + 1] > best:
                    best, end = row[j + 1], i + 1
        prev = row
    return s1[end - best:end], best


def cmrc_f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """CMRC 2018 F1 (`calc_f1_score`): P = lcs/|pred segments|, R = lcs/|gold segments|,
    maximum over the gold answers."""
    pred = mixed_segmentation(prediction, rm_punc=True)

    def one(gold: str) -> float:
        gold_segs = mixed_segmentation(gold, rm_punc=True)
        _, length = find_lcs(gold_segs, pred)
        if length == 0:
            return 0.0
        precision, recall = length / len(pred), length / len(gold_segs)
        return 2 * precision * recall / (precision + recall)

    return max_over_ground_truths(lambda _p, gold: one(gold), prediction, ground_truths)


def cmrc_exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """CMRC 2018 EM (`calc_em_score`): equal after `remove_punctuation`, for any gold."""
    pred = remove_punctuation(prediction)
    return max_over_ground_truths(lambda _p, gold: float(remove_punctuation(gold) == pred),
                                  prediction, ground_truths)


# ---------------------------------------------------------------- data and prompt

def _read_squad_format(path: Path, name: str, source: str, limit: int | None) -> list[QARecord]:
    """Questions of a SQuAD-format JSON file (`data → paragraphs → qas`), in file order."""
    if not path.is_file():
        raise LmforgeError(f"{name} data file not found: {path}; put {path.name} (from {source}) "
                           f"in {path.parent}, as its README describes")
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise LmforgeError(f"{path} is not a SQuAD-format JSON file ({err}); "
                           f"replace it with the original {path.name}") from err
    records: list[QARecord] = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if limit is not None and len(records) >= limit:
                    return records
                records.append(QARecord(
                    id=qa["id"], title=article.get("title", ""), context=paragraph["context"],
                    question=qa["question"],
                    answers=tuple(a["text"] for a in qa["answers"])))
    return records


def load_squad(directory: str | Path, limit: int | None = None) -> list[QARecord]:
    """SQuAD v1.1 dev questions from `directory`/dev-v1.1.json (10,570 in all)."""
    return _read_squad_format(Path(directory) / SQUAD_FILE, "SQuAD v1.1",
                              "rajpurkar/SQuAD-explorer", limit)


def load_cmrc2018(directory: str | Path, limit: int | None = None) -> list[QARecord]:
    """CMRC 2018 dev questions from `directory`/cmrc2018_dev.json (3,219 in all)."""
    return _read_squad_format(Path(directory) / CMRC_FILE, "CMRC 2018",
                              "ymcui/cmrc2018 squad-style-data", limit)


QA_STOP = "\n"  # the harness generates until the first newline


def qa_prompt(record: QARecord) -> str:
    """The harness's SQuAD prompt (squadv2 `doc_to_text`); the answer follows "Answer:"."""
    return (f"Title: {record.title}\n\nBackground: {record.context}\n\n"
            f"Question: {record.question}\n\nAnswer:")
