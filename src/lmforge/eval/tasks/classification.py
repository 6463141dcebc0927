"""Sentiment classification by label-word likelihood: SST-2 dev (`sst2`) and ChnSentiCorp
test (`chnsenticorp`), zero- or few-shot.

    pred = argmax_y Σ_t log p(w_y,t | prompt(x), w_y,<t)        acc = [pred == gold]

with the templates and label words of `lmforge.eval.classify` (SST-2: the harness's `sst2`,
" negative" / " positive"; ChnSentiCorp: the same question in Chinese, "负面" / "正面").
A batch's contexts are prefilled in one padded pass and each context's cache is shared by
its two label words (`classify.label_loglikelihoods`, on `score.loglikelihood_requests`).

Few-shot (`--shots K`): K training examples (SST-2 `train.tsv`, ChnSentiCorp `train.csv`)
drawn per example by base.py's `Shots`, each written as prompt + its label word, joined
by "\\n\\n" (`classify.Template.context`).

With a trained head (`--adapter DIR` of `lmforge finetune --task seqcls` or `lmforge
probe`): the head's argmax over the text alone replaces the label words (no prompt, no
shots); the record's `pred` is the head's label and `scored_by` says "head".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval import classify
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, register
from lmforge.eval.tasks.indexed import Indexed, indexed


def prompt(template: classify.Template, example: Indexed[classify.Example], shots: Shots
           ) -> str:
    return template.context(example.item, [d.item for d in shots(example.index)])


def head_records(lm: Any, task: str, batch: list[Indexed[classify.Example]], shots: Shots
                 ) -> list[ExampleRecord]:
    """The records of a model with a classification head: its label for each text."""
    from lmforge.adapt.classifier import classify as head_labels

    if shots.k:
        raise LmforgeError("a classification head reads the text alone: use --shots 0 with "
                           "a head adapter")
    preds = head_labels(lm, [ex.item.text for ex in batch])
    return [ExampleRecord(task, ex.index, {"acc": float(pred == str(ex.item.label))},
                          {"text": ex.item.text, "gold": ex.item.label, "pred": pred,
                           "scored_by": "head"})
            for ex, pred in zip(batch, preds, strict=True)]


def score_examples(lm: Any, task: str, template: classify.Template,
                   batch: list[Indexed[classify.Example]], shots: Shots) -> list[ExampleRecord]:
    if hasattr(lm.model, "classifier"):  # a head adapter (adapt/classifier.py) is loaded
        return head_records(lm, task, batch, shots)
    contexts = [prompt(template, ex, shots) for ex in batch]
    out = []
    for ex, lps in zip(batch, classify.label_loglikelihoods(lm, contexts, template.labels),
                       strict=True):
        pred = classify.predict(lps)
        out.append(ExampleRecord(task, ex.index, {"acc": float(pred == ex.item.label)},
                                 {"text": ex.item.text, "gold": ex.item.label, "pred": pred,
                                  "loglikelihoods": lps,
                                  "shots": [d.index for d in shots(ex.index)]}))
    return out


def _task(name: str, folder: str, split: str, suffix: str,
          load: Callable[[str, Path], list[classify.Example]], description: str) -> Task:
    template = classify.DATASETS[name].template
    return register(Task(
        name, f"{folder}/{split}{suffix}", ("acc",), 0, description,
        lambda path: indexed(load(path.stem, path.parent)),
        lambda lm, batch, shots: score_examples(lm, name, template, batch, shots),
        fewshot_file=f"{folder}/train{suffix}", batch=classify.CONTEXTS_PER_PASS))


_task("sst2", "sst2", "dev", ".tsv", classify.load_sst2,
      "SST-2 (GLUE) dev (872): label-word likelihood, ' negative' / ' positive'")
_task("chnsenticorp", "chnsenticorp", "test", ".csv", classify.load_chnsenticorp,
      "ChnSentiCorp test (776): label-word likelihood, 负面 / 正面")
