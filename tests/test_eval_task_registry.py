"""The generation, classification, bias and repetition tasks of `lmforge eval --tasks`:
registered and loading their data, few-shot pools, missing files, batched generation, and
one end-to-end run on smollm2."""

from __future__ import annotations

import shutil

import pytest
from conftest import SHARED_DATA
from test_eval_bias_rep import tiny_lm

from lmforge.errors import LmforgeError
from lmforge.eval import classify, generated, qa
from lmforge.eval.tasks import (
    TASKS,
    arithmetic,
    classification,
    evaluate_tasks,
    get_task,
    gsm8k,
    reading,
    repetition,
)
from lmforge.eval.tasks.base import Shots, read_jsonl
from lmforge.eval.tasks.runner import resolve_tasks

SIZES = {"squad": 10570, "cmrc2018": 3219, "gsm8k": 1319, "sst2": 872, "chnsenticorp": 776,
         "crows_pairs": 1508, "repetition": repetition.PROMPTS}
ARITHMETIC = [f"arithmetic_{s}" for s in ("2da", "3da", "4da", "5da", "2ds", "3ds", "4ds",
                                          "5ds", "2dm")]


@pytest.mark.parametrize("name", [*SIZES, "arithmetic_3ds"])
def test_task_is_registered_and_loads(name):
    t = get_task(name)
    examples = t.load(t.path())
    assert len(examples) == SIZES.get(name, arithmetic.PROBLEMS)
    assert [e.index for e in examples[:5]] == [0, 1, 2, 3, 4]


def test_arithmetic_tasks_are_gpt3s_and_generated_from_a_fixed_seed():
    assert set(ARITHMETIC) <= set(TASKS)
    t = get_task("arithmetic_4ds")
    problems = t.load(t.path())
    assert problems == t.load(t.path())  # the same problems every run
    assert all(p.item.operation == "minus" and 0 <= p.item.a < 10_000 for p in problems)
    assert any(p.item.answer < 0 for p in problems)
    shots = t.shots(4, problems, seed=7)
    demos = shots(0)
    assert len(demos) == 4 and all(d in t.fewshot_pool for d in demos)
    assert {d.item for d in t.fewshot_pool}.isdisjoint(p.item for p in problems[:200])
    assert get_task("arithmetic_2dm").load(None)[0].item.operation == "times"


def test_fewshot_prompts_are_drawn_from_train():
    t = get_task("sst2")
    dev = t.load(t.path())
    train = set(classify.load_sst2("train", SHARED_DATA / "sst2"))
    shots = t.shots(3, dev, seed=1234)
    demos = shots(dev[0].index)
    assert len(demos) == 3 and all(d.item in train for d in demos)
    template = classify.DATASETS["sst2"].template
    assert classification.prompt(template, dev[0], shots) == \
        template.context(dev[0].item, [d.item for d in demos])
    assert shots(dev[1].index) != demos  # drawn per example

    t = get_task("gsm8k")
    test = t.load(t.path())
    questions = {r["question"] for r in read_jsonl(SHARED_DATA / "gsm8k" / "train.jsonl")}
    shots = t.shots(2, test, seed=1234)
    first = shots(0)[0].item
    assert all(d.item.question in questions for d in shots(0))
    text = gsm8k.prompt(test[0], shots)
    assert text.startswith(f"Question: {first.question}\nAnswer: {first.answer}\n\n")
    assert text.endswith(f"Question: {test[0].item.question}\nAnswer:")


def test_missing_data_files_are_named(tmp_path):
    with pytest.raises(LmforgeError, match=r"'squad' needs its data file squad/dev-v1.1.json"):
        resolve_tasks(["squad"], 0, tmp_path)
    (tmp_path / "sst2").mkdir()
    shutil.copy(SHARED_DATA / "sst2" / "dev.tsv", tmp_path / "sst2")
    resolve_tasks(["sst2"], 0, tmp_path)
    with pytest.raises(LmforgeError, match="sst2/train.tsv"):
        resolve_tasks(["sst2"], 2, tmp_path)
    resolve_tasks(["arithmetic_2da"], 4, tmp_path)  # generated: no data file needed


@pytest.mark.parametrize("name", ["crows_pairs", "repetition"])
def test_zero_shot_only_tasks_refuse_shots(name):
    with pytest.raises(LmforgeError, match="zero-shot only"):
        resolve_tasks([name], 1)


def test_repetition_prompts_and_settings():
    t = get_task("repetition")
    prompts = t.load(t.path())
    assert prompts == t.load(t.path())
    assert all(len(p.item.text.split()) <= repetition.PROMPT_WORDS for p in prompts)
    assert not any("<unk>" in p.item.text or "@-@" in p.item.text for p in prompts)
    batch = prompts[:2]
    lm = tiny_lm("".join(p.item.text for p in batch), max_seq_len=512)
    both = repetition.score_prompts(lm, "repetition", repetition.SETTINGS, 8, batch, Shots(0))
    alone = repetition.score_prompts(lm, "repetition", repetition.SETTINGS, 8, batch[1:],
                                     Shots(0))
    assert set(both[0].metrics) == set(t.metrics)
    assert all(0.0 <= v <= 1.0 for k, v in both[0].metrics.items() if "/rep-" in k)
    assert all(both[0].metrics[f"{s}/nll"] > 0 for s in repetition.SETTINGS)
    assert both[0].metrics["no_repeat_3gram/rep-3"] == 0.0
    # a sampled row's seed is its prompt's number: the same text in any batch
    assert both[1].details["continuations"] == alone[0].details["continuations"]


def test_squad_generation_batched_equals_one_at_a_time(smollm2):
    t = get_task("squad")
    questions = t.load(t.path())[:3]

    def predictions(batch):
        return [r.details["prediction"] for r in reading.score_questions(
            smollm2, "squad", batch, Shots(0), qa.exact_match, qa.f1, max_tokens=6)]

    together = predictions(questions)
    assert together == [p for q in questions for p in predictions([q])]
    assert all(p and "\n" not in p for p in together)
    assert questions[0].item.answers == ("Denver Broncos",) * 3


def test_tasks_end_to_end_on_smollm2(smollm2):
    names = ["arithmetic_2da", "sst2", "crows_pairs"]  # squad: the test above
    report, records = evaluate_tasks(smollm2, names, limit=2, progress=False)
    for name in names:
        summary = report["tasks"][name]
        assert summary["n"] == 2
        for metric in get_task(name).metrics:
            if summary[metric].get("n", 2) < 2:  # a bias type with fewer than 2 pairs
                continue
            assert 0.0 <= summary[metric]["value"] <= 1.0
            assert summary[metric]["stderr"] is not None
    crows = report["tasks"]["crows_pairs"]
    types = [m for m in get_task("crows_pairs").metrics if "/" in m]
    assert sum(crows[m].get("n", 2) for m in types) == 2  # each pair in its type's share
    assert [(r.task, r.index) for r in records] == [(n, i) for n in names for i in (0, 1)]
    assert records[0].details["gold"] == generated.arithmetic_problems("plus", 2, 1)[0].answer
    assert records[2].details["gold"] == classify.load_sst2("dev", SHARED_DATA / "sst2")[0].label


def test_sst2_with_a_trained_head_adapter(tmp_path):
    """`eval --tasks sst2 --adapter RUN/adapter`: the head's labels replace the label words,
    and the task's accuracy equals the fine-tuning run's own on the same dev rows."""
    from test_finetune import FAST, SST2, tiny_model

    import lmforge
    from lmforge.adapt.finetune import finetune
    from lmforge.interop.load import load_weights

    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    for split, rows in (("train", 65), ("dev", 33)):
        lines = (SST2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[:rows]
        (root / "sst2" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = tiny_model(tmp_path / "tiny", load_weights("minilm")[2])
    r = finetune(base, "probe", "seqcls", root / "sst2" / "train.tsv",
                 {**FAST, "eval_data": str(root / "sst2" / "dev.tsv"),
                  "out_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
                 progress=False)
    lm = lmforge.load(base, adapter=r.run_dir / "adapter")
    report, records = evaluate_tasks(lm, ["sst2"], data_root=root, progress=False,
                                     adapter=r.run_dir / "adapter")
    assert report["tasks"]["sst2"]["n"] == r.eval_n == 32
    assert report["tasks"]["sst2"]["acc"]["value"] == r.eval_acc
    assert all(rec.details["scored_by"] == "head" for rec in records)
    assert report["settings"]["adapter"]["hash"].startswith("sha256:")
    with pytest.raises(LmforgeError, match="--shots 0"):
        evaluate_tasks(lm, ["sst2"], shots=2, data_root=root, progress=False)
