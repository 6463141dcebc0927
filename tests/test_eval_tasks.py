"""Task evaluation (lmforge.eval.tasks): the harness's prompt formats, acc / acc_norm, the
bootstrap, the report and `lmforge eval --tasks`, and per-choice log-likelihoods equal to
transformers' on the SmolLM2 GGUF.

The expected prompts are written from EleutherAI/lm-evaluation-harness's task definitions:
`lm_eval/tasks/hellaswag/utils.py` (preprocess, process_docs: activity_label + ": " +
ctx_a + " " + ctx_b.capitalize()), `lm_eval/tasks/arc/arc_easy.yaml` and
`lm_eval/tasks/piqa/piqa.yaml` ("Question: {…}\\nAnswer:"), continuations " " + choice.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, SMOLLM2_GGUF, smollm2_folder

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.eval.pairs import encode_pair
from lmforge.eval.tasks import TASKS, get_task
from lmforge.eval.tasks.base import Shots
from lmforge.eval.tasks.multiple_choice import (
    arc_examples,
    choice_loglikelihoods,
    choose,
    hellaswag_examples,
    piqa_examples,
    preprocess,
    prompt,
)
from lmforge.eval.tasks.report import bootstrap_stderr, markdown_table, summarize
from lmforge.eval.tasks.runner import resolve_tasks


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_hellaswag_prompt_equals_harness(tmp_path):
    # record 0 of the validation set: activity_label "Roof shingle removal", ctx_a "A man
    # is sitting on a roof.", ctx_b "he" -> the harness's query ends in "He"
    ex = hellaswag_examples(SHARED_DATA / "hellaswag" / "hellaswag_val.jsonl")[0]
    assert ex.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert ex.choices[3] == "starts pulling up roofing on a roof."
    assert ex.gold == 3
    # a WikiHow record with a tag the file kept, and an empty ctx_b (ends a sentence)
    f = write_jsonl(tmp_path / "h.jsonl", [
        {"idx": 0, "query": "Personal Care and Style: How to style straight hair. A "
                            "[style a pixie cut | pixie cut] can add volume.",
         "label": 1, "endings": ["Keep  the sides cropped.", "[title] Add layers."]},
        {"idx": 1, "query": "Canoeing: Two women are shown. the child and Tom",
         "label": 0, "endings": ["sit.", "stand."]}])
    a, b = hellaswag_examples(f)
    assert a.context == "Personal Care and Style: How to style straight hair. A can add volume."
    # the harness strips before removing tags, so a leading tag leaves a space
    assert a.choices == ["Keep the sides cropped.", " Add layers."]
    # str.capitalize lowercases the rest, as the harness's ctx_b.capitalize() does
    assert b.context == "Canoeing: Two women are shown. The child and tom"


def test_preprocess_is_harness_cleanup():
    assert preprocess(" [header] How to sit [title] Find a chair.  Sit ") == \
        " How to sit. Find a chair. Sit"
    clean = "A man is sitting on a roof. He"
    assert preprocess(clean) == clean  # the identity on already-clean text


def test_arc_and_piqa_prompts_equal_harness(tmp_path):
    ex = arc_examples(SHARED_DATA / "arc" / "ARC-Easy-Test.jsonl")[0]
    assert ex.context == ("Question: Which statement best explains why photosynthesis is the "
                          "foundation of most food webs?\nAnswer:")
    assert ex.choices[0] == "Sunlight is the source of energy for nearly all ecosystems."
    assert ex.gold == 0
    numeric = {"id": "x", "answerKey": "3", "question": {"stem": "2+1?", "choices": [
        {"text": str(k), "label": str(k)} for k in (1, 2, 3, 4)]}}
    assert arc_examples(write_jsonl(tmp_path / "a.jsonl", [numeric]))[0].gold == 2
    p = piqa_examples(SHARED_DATA / "piqa" / "valid.jsonl")
    assert len(p) == 1838 and p[1].gold == 1
    assert p[1].context == "Question: dresser\nAnswer:"
    assert p[1].choices == ["replace drawer with bobby pin ", "finish, woodgrain with  bobby pin "]


def test_piqa_labels_must_be_beside(tmp_path):
    f = write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}])
    with pytest.raises(LmforgeError, match="valid-labels.lst"):
        piqa_examples(f)


def test_choose_acc_and_acc_norm():
    # LL: -10 (1 byte) vs -12 (6 bytes): acc picks 0, acc_norm picks 1 (-2 per byte)
    m, pred, pred_norm = choose([-10.0, -12.0], ["a", "bbbbbb"], gold=1)
    assert (m, pred, pred_norm) == ({"acc": 0.0, "acc_norm": 1.0}, 0, 1)
    # bytes, not characters: "é" is 2 bytes, so -3/2 beats -2/1
    assert choose([-2.0, -3.0], ["x", "é"], gold=1)[2] == 1
    assert choose([-1.0, -1.0], ["a", "b"], gold=0)[0]["acc"] == 1.0  # ties: the first


def test_bootstrap_stderr_matches_binomial():
    rng = np.random.default_rng(0)
    x = (rng.random(2000) < 0.3).astype(float)
    p = x.mean()
    se = bootstrap_stderr(x, seed=1)
    assert se == pytest.approx(math.sqrt(p * (1 - p) / len(x)), rel=0.1)
    assert bootstrap_stderr(x, seed=1) == se  # the seed fixes it
    assert bootstrap_stderr([1.0], seed=1) is None


def test_summary_and_table():
    from lmforge.eval.tasks import ExampleRecord

    recs = [ExampleRecord("t", i, {"acc": float(i % 2), "acc_norm": 1.0}) for i in range(10)]
    s = summarize(recs, ("acc", "acc_norm"), seed=3)
    assert s["n"] == 10 and s["acc"]["value"] == 0.5 and s["acc_norm"]["stderr"] == 0.0
    report = {"settings": {"model": "m", "dtype": "float32", "shots": 0, "limit": 10,
                           "seed": 3}, "tasks": {"t": s}}
    table = markdown_table(report)
    assert "| t | acc | 10 | 50.0 ± " in table and "|  | acc_norm | 10 | 100.0 ± 0.0 |" in table


def test_missing_data_file_names_it(tmp_path, capsys):
    with pytest.raises(LmforgeError, match="hellaswag/hellaswag_val.jsonl"):
        resolve_tasks(["hellaswag"], data_root=tmp_path)
    with pytest.raises(LmforgeError, match="unknown task 'nope'"):
        resolve_tasks(["nope"])
    with pytest.raises(LmforgeError, match="ARC-Easy-Train.jsonl"):
        resolve_tasks(["arc_easy"], shots=5, data_root=_only(tmp_path, "arc/ARC-Easy-Test.jsonl"))
    assert main(["eval", "--model", "smollm2", "--tasks", "piqa", "--data-root",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "piqa/valid.jsonl" in err and str(tmp_path) in err


def _only(tmp_path, name):
    """A data root holding only `name` (a link to the shared file)."""
    root = tmp_path / "only"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).symlink_to(SHARED_DATA / name)
    return root


def test_shots_are_seeded_exclude_the_example_and_join_as_harness():
    pool = arc_examples(SHARED_DATA / "arc" / "ARC-Easy-Test.jsonl")[:12]
    shots = Shots(3, pool, seed=5, same_split=True)
    for ex in pool:
        drawn = shots(ex.index)
        assert len(drawn) == 3 and ex.index not in [d.index for d in drawn]
        assert [d.index for d in drawn] == [d.index for d in Shots(3, pool, 5, True)(ex.index)]
    assert [d.index for d in shots(0)] != [d.index for d in Shots(3, pool, 6, True)(0)]
    text = prompt(pool[0], Shots(2, pool, 5, same_split=True))
    first, second, query = text.split("\n\n")
    assert query == pool[0].context and first.startswith("Question: ")
    d = Shots(2, pool, 5, same_split=True)(0)[0]
    assert first == f"{d.context} {d.choices[d.gold]}"
    with pytest.raises(LmforgeError, match="need at least 12"):
        Shots(11, pool[:11], same_split=True)


def test_few_shot_arc_draws_from_train_and_batches_like_one_by_one(smollm2):
    """2-shot ARC-Easy: demonstrations from the training split; the batched scoring of 4
    examples (contexts prefilled together) equals one request at a time within 1e-4."""
    from lmforge.score import loglikelihood

    task = get_task("arc_easy")
    examples = task.load(task.path())
    shots = task.shots(2, examples, seed=1)
    train_ids = {r.index for r in shots.pool}
    assert len(shots.pool) > 2000 and all(d.index in train_ids for d in shots(0))
    batch = examples[:4]
    together = choice_loglikelihoods(smollm2, batch, shots)
    for ex, lls in zip(batch, together, strict=True):
        context = prompt(ex, shots)
        pairs = [encode_pair(smollm2.tokenizer, context, " " + c) for c in ex.choices]
        alone = loglikelihood(smollm2.model, pairs[0][0], [x for _, x in pairs])
        assert lls == pytest.approx([r.logprob for r in alone], abs=1e-4)


def test_tasks_list(capsys):
    assert main(["eval", "--tasks", "list"]) == 0
    out = capsys.readouterr().out
    for name, t in TASKS.items():
        assert name in out and (t.data_file or "(generated)") in out
    assert "acc_norm" in out and "[missing]" not in out


def test_cli_eval_tasks_writes_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["eval", "--model", "smollm2", "--tasks", "hellaswag,arc_easy", "--limit", "3",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    s = report["settings"]
    assert (s["model"], s["dtype"], s["shots"], s["limit"]) == ("smollm2", "float32", None, 3)
    assert report["tasks"]["hellaswag"]["shots"] == 0  # the task's default
    assert set(report["tasks"]) == {"hellaswag", "arc_easy"}
    assert report["tasks"]["hellaswag"]["n"] == 3
    lines = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [(r["task"], r["index"]) for r in lines] == \
        [("hellaswag", i) for i in range(3)] + [("arc_easy", i) for i in range(3)]
    assert all(len(r["loglikelihoods"]) == 4 for r in lines)
    printed = capsys.readouterr().out
    assert "| hellaswag | acc | 3 |" in printed and "| arc_easy | acc | 3 |" in printed


def test_loglikelihoods_equal_transformers(smollm2, hf_smollm2):
    """3 HellaSwag examples × 4 endings: our tokenisation equals the harness's
    `_encode_pair` on the GGUF's transformers tokenizer, and our per-choice Σ log p equals
    transformers' fp32 forward on the same ids within 1e-4."""
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    task = get_task("hellaswag")
    ours, rows, starts = [], [], []
    examples = task.load(task.path())[:3]
    ours = [ll for lls in choice_loglikelihoods(smollm2, examples) for ll in lls]
    for ex in examples:
        ctx = hf_tok(ex.context, add_special_tokens=False)["input_ids"]
        for choice in ex.choices:
            whole = hf_tok(ex.context + " " + choice, add_special_tokens=False)["input_ids"]
            assert encode_pair(smollm2.tokenizer, ex.context, " " + choice) == \
                (ctx, whole[len(ctx):])
            rows.append(whole)
            starts.append(len(ctx))
    # one right-padded batch: a causal row never reads the padding after it
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        logp = hf_smollm2(ids).logits.double().log_softmax(-1)  # (12, width, V)
    for b, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ref = sum(logp[b, t - 1, row[t]].item() for t in range(start, len(row)))
        assert ours[b] == pytest.approx(ref, abs=1e-4)


def test_lambada_splits_the_last_word_and_scores_it(smollm2):
    """lambada_openai's doc_to_text / doc_to_target (split on single spaces); acc is the
    greedy check and nll the target's negative log-likelihood from `score.loglikelihood`."""
    from lmforge.eval.tasks.lambada import lambada_passages
    from lmforge.eval.tasks.runner import evaluate_tasks
    from lmforge.score import loglikelihood

    path = SHARED_DATA / "lambada" / "lambada_test.jsonl"
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["text"]
    p = lambada_passages(path)[0]
    assert p.context + p.target == first and " " not in p.target[1:]
    report, records = evaluate_tasks(smollm2, ["lambada_openai"], limit=3, progress=False)
    assert report["tasks"]["lambada_openai"]["n"] == 3
    ctx, target = encode_pair(smollm2.tokenizer, p.context, p.target)
    (ref,) = loglikelihood(smollm2.model, ctx, [target])
    # the passages are prefilled together: equal to one at a time up to fp32 rounding
    assert records[0].metrics["acc"] == float(ref.is_greedy)
    assert records[0].metrics["nll"] == pytest.approx(-ref.logprob, abs=1e-4)
    assert all(r.metrics["nll"] > 0 for r in records)
