"""Zero- and few-shot text classification by label-word likelihood (generative models).

    prediction(x) = argmax_y  Σ_t log p(w_y,t | prompt(x), w_y,<t)

where w_y is label y's word as a continuation (`lmforge.score.loglikelihood`). Accuracy is
the share of examples whose prediction equals the gold label.

Prompts follow lm-evaluation-harness:

- SST-2 (GLUE dev): its `sst2` task, "{sentence}\\nQuestion: Is this sentence positive or
  negative?\\nAnswer:" with the continuations " negative" (0) and " positive" (1) (v0.3
  `lm_eval/tasks/glue.py` `SST.doc_to_text` and `construct_requests`; v0.4's
  `glue/sst2` YAML has the same text and choices behind its default " " target
  delimiter). v0.3 also detokenized the PTB sentence; v0.4, which we follow, passes the
  GLUE sentence as it is (ours is verbatim GLUE, trailing space included).
- ChnSentiCorp (test): the harness has no task for it; our template is the SST-2 one in
  Chinese, "{review}\\n问题：这条评论是正面还是负面？\\n回答：" with "负面" (0) and
  "正面" (1), and no delimiter before the label (Chinese puts no space there).

Few-shot (k > 0): k training examples drawn once with `random.Random(seed)` (the same
shots for every example; the harness draws per example) are prepended, each written as
prompt + its label word, joined by the harness's few-shot delimiter "\\n\\n". Both data
sets have a train split (SST-2 `train.tsv`, ChnSentiCorp `train.csv`).

Tokenization mirrors the harness's `_encode_pair`: trailing spaces of the context move to
the continuation, the continuation's ids are those of tokenize(context + continuation)
after the context's, and no BOS is added (the harness's default for causal models).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.pairs import encode_choices
from lmforge.score import loglikelihood_requests

DATA = Path("../shared/data")
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # the harness's default few-shot seed
CONTEXTS_PER_PASS = 16  # examples whose contexts are prefilled in one padded pass
LABEL_ROWS = 32  # label continuations scored per forward pass


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Template:
    prompt: str  # with one {text} field
    labels: tuple[str, ...]  # label y's continuation, delimiter included

    def context(self, example: Example, shots: Sequence[Example] = ()) -> str:
        blocks = [self.prompt.format(text=s.text) + self.labels[s.label] for s in shots]
        return FEWSHOT_DELIMITER.join([*blocks, self.prompt.format(text=example.text)])


SST2 = Template("{text}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                (" negative", " positive"))
CHNSENTICORP = Template("{text}\n问题：这条评论是正面还是负面？\n回答：", ("负面", "正面"))


def _read(path: Path, delimiter: str, text: str, what: str) -> list[Example]:
    if not path.is_file():
        raise LmforgeError(f"{what} file {path} not found: see ../shared/data/"
                           f"{path.parent.name}/README.md for where it comes from, or pass "
                           "its directory")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if not rows or not {text, "label"} <= set(rows[0]):
        raise LmforgeError(f"{path} needs the columns {text!r} and 'label'")
    return [Example(r[text], int(r["label"])) for r in rows]


def load_sst2(split: str = "dev", root: str | Path = DATA / "sst2") -> list[Example]:
    """GLUE SST-2 `dev.tsv` or `train.tsv` (sentence, label 0/1), sentences verbatim."""
    if split not in ("dev", "train"):
        raise LmforgeError(f"SST-2 has the splits dev and train (GLUE's test has no "
                           f"labels); got {split!r}")
    return _read(Path(root) / f"{split}.tsv", "\t", "sentence", "SST-2")


def load_chnsenticorp(split: str = "test", root: str | Path = DATA / "chnsenticorp"
                      ) -> list[Example]:
    """ChnSentiCorp hotel reviews `train.csv`, `dev.csv` or `test.csv` (label, review)."""
    if split not in ("train", "dev", "test"):
        raise LmforgeError(f"ChnSentiCorp has the splits train, dev and test; got {split!r}")
    return _read(Path(root) / f"{split}.csv", ",", "review", "ChnSentiCorp")


@dataclass(frozen=True)
class Dataset:
    load: Callable[[str], list[Example]]
    eval_split: str
    train_split: str
    template: Template


DATASETS = {"sst2": Dataset(load_sst2, "dev", "train", SST2),
            "chnsenticorp": Dataset(load_chnsenticorp, "test", "train", CHNSENTICORP)}


def few_shot(train: Sequence[Example], k: int, seed: int = FEWSHOT_SEED) -> list[Example]:
    """k training examples drawn without replacement with `random.Random(seed)`."""
    if not 0 <= k <= len(train):
        raise LmforgeError(f"shots={k} must lie between 0 and the {len(train)} training "
                           "examples")
    return random.Random(seed).sample(list(train), k)


def predict(logprobs: Sequence[float]) -> int:
    """The label with the highest log-likelihood (the first on a tie, as numpy's argmax)."""
    return max(range(len(logprobs)), key=logprobs.__getitem__)


@dataclass(frozen=True)
class Prediction:
    example: Example
    logprobs: tuple[float, ...]  # per label
    predicted: int

    @property
    def correct(self) -> bool:
        return self.predicted == self.example.label


@dataclass
class ClassifyReport:
    accuracy: float
    n: int
    records: list[Prediction]


def label_loglikelihoods(lm, contexts: Sequence[str], labels: Sequence[str]
                         ) -> list[list[float]]:
    """Σ log p of each label word after each context (`lm` a LoadedModel): the contexts
    prefilled together and each one's cache shared by its labels
    (`score.loglikelihood_requests`)."""
    requests = [encode_choices(lm.tokenizer, context, labels) for context in contexts]
    return [[ll.logprob for ll in lls] for lls in
            loglikelihood_requests(lm.model, requests, batch=LABEL_ROWS, truncate=True)]


def classify(lm, examples: Sequence[Example], template: Template,
             shots: Sequence[Example] = ()) -> ClassifyReport:
    """Predict every example by label-word likelihood with `lm` (a LoadedModel)."""
    if not examples:
        raise LmforgeError("no examples to classify: check the data file and --limit")
    records = []
    for i in range(0, len(examples), CONTEXTS_PER_PASS):
        chunk = examples[i: i + CONTEXTS_PER_PASS]
        for ex, lps in zip(chunk, label_loglikelihoods(
                lm, [template.context(ex, shots) for ex in chunk], template.labels), strict=True):
            records.append(Prediction(ex, tuple(lps), predict(lps)))
    return ClassifyReport(sum(r.correct for r in records) / len(records), len(records), records)
