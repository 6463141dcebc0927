"""The evaluation report: `lmforge eval --compare`, the model settings a report records,
per-task timing, and the SQuAD metric against the official evaluation script's output
(tests/fixtures/squad_official/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lmforge.api import LoadedModel, build_model
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.eval.qa import exact_match, f1, load_squad
from lmforge.eval.tasks.base import PROMPT_FORMAT, ExampleRecord
from lmforge.eval.tasks.compare import compare_reports
from lmforge.eval.tasks.report import (
    markdown_table,
    model_settings,
    summarize,
    write_report,
)
from lmforge.interop.fingerprint import content_hash
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

SQUAD_FIXTURE = Path(__file__).parent / "fixtures" / "squad_official"


def records(task: str, outcomes: list[float]) -> list[ExampleRecord]:
    return [ExampleRecord(task, i, {"acc": x}) for i, x in enumerate(outcomes)]


def save_run(path: Path, outcomes: dict[str, list[float]], limit: int | None = None) -> Path:
    """A report of 0/1 `acc` outcomes per task, written as `lmforge eval --out` writes it."""
    settings = {"model": "m", "dtype": "float32", "shots": 0, "seed": 1, "limit": limit,
                "prompt_format": PROMPT_FORMAT}
    recs = {t: records(t, xs) for t, xs in outcomes.items()}
    report = {"settings": settings,
              "tasks": {t: summarize(r, ("acc",), seed=1) for t, r in recs.items()}}
    write_report(path, report, [r for rs in recs.values() for r in rs])
    return path


def row(table: str, task: str) -> list[str]:
    line = next(x for x in table.splitlines() if x.startswith(f"| {task} | acc |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_compare_marks_differences_beyond_the_standard_error(tmp_path):
    # far: 0.5 → 0.9 on 100 examples (stderr ≈ 0.05 and 0.03): marked;
    # near: 0.50 → 0.52 (2 of 100 flipped): within the standard error, not marked
    a = save_run(tmp_path / "a.json", {"far": [i % 2 for i in range(100)],
                                       "near": [i % 2 for i in range(100)]})
    b = save_run(tmp_path / "b.json", {"far": [float(i % 10 != 0) for i in range(100)],
                                       "near": [float(i % 2 or i < 4) for i in range(100)]})
    table = compare_reports([a, b])
    far, near = row(table, "far"), row(table, "near")
    assert far[2].startswith("50.0 ± ") and far[3].startswith("90.0 ± ")
    assert far[4] == "+40.0 *"
    assert near[4] == "+2.0"
    assert "[2] vs [1]: far: 40 of 100 shared examples differ on acc" in table
    assert "[2] vs [1]: near: 2 of 100 shared examples differ on acc" in table
    assert "not comparable" not in table


def test_compare_three_reports_notes_settings_and_missing_records(tmp_path):
    a = save_run(tmp_path / "a.json", {"t": [1.0, 0.0, 1.0, 1.0]}, limit=4)
    b = save_run(tmp_path / "b.json", {"t": [0.0, 0.0]}, limit=2)
    c = save_run(tmp_path / "c.json", {"t": [1.0, 0.0, 1.0, 1.0]}, limit=4)
    c.with_suffix(".jsonl").unlink()
    table = compare_reports([a, b, c])
    assert row(table, "t")[4] == "−75.0 *" and row(table, "t")[6] == "+0.0"
    assert "[2] vs [1]: limit differs (2 vs 4): not comparable example by example" in table
    assert "[2] vs [1]: t: 1 of 2 shared examples differ on acc" in table
    assert f"[3] vs [1]: no per-example comparison ({c.with_suffix('.jsonl')} missing)" in table


def test_compare_cli_needs_no_model_and_names_a_bad_file(tmp_path, capsys):
    a = save_run(tmp_path / "a.json", {"t": [1.0, 0.0]})
    b = save_run(tmp_path / "b.json", {"t": [1.0, 1.0]})
    assert main(["eval", "--compare", str(a), str(b)]) == 0
    assert "| t | acc | 50.0 ± " in capsys.readouterr().out

    missing = tmp_path / "nope.json"
    assert main(["eval", "--compare", str(a), str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(LmforgeError, match="broken.json is not valid JSON"):
        compare_reports([a, broken])
    broken.write_text('{"tasks": {}}')
    with pytest.raises(LmforgeError, match="broken.json is not an lmforge evaluation report"):
        compare_reports([a, broken])
    with pytest.raises(LmforgeError, match="two or more"):
        compare_reports([a])


def test_summary_timing_and_table_units():
    recs = [ExampleRecord("lambada", i, {"acc": float(i % 2), "nll": 1.5 + i}) for i in range(4)]
    s = summarize(recs, ("acc", "nll"), seed=0, seconds=2.0)
    assert s["seconds"] == 2.0 and s["examples_per_s"] == 2.0
    assert "seconds" not in summarize(recs, ("acc",), seed=0)  # the call without timing
    report = {"settings": {"model": "m", "dtype": "float32", "shots": 0, "limit": 4,
                           "seed": 0}, "tasks": {"lambada": s}}
    table = markdown_table(report)
    assert "| task | metric | n | value | shots | ex/s |" in table
    assert "| lambada | acc | 4 | 50.0 ± 24.6 |  | 2.0 |" in table
    assert "|  | nll | 4 | 3.000 ± " in table  # nll in nats
    per_setting = summarize(recs, ("acc",), seed=0, aggregate={"greedy/nll": 0.25})
    table = markdown_table({**report, "tasks": {"r": per_setting}})
    assert "| greedy/nll | 4 | 0.250 |" in table  # a setting's nll: nats, no stderr


def tiny_lm(dtype: torch.dtype) -> tuple[LoadedModel, dict[str, torch.Tensor]]:
    config = ModelConfig(vocab_size=11, d_model=16, n_layer=1, n_head=2, d_ff=32,
                         max_seq_len=16)
    source = Transformer(config)
    source.init_weights(std=0.3, seed=0)
    state = source.state_dict()
    return LoadedModel(build_model(config, state, dtype), None, "tiny", "/x/tiny", {}), state


def test_model_settings_name_the_weights_by_content(tmp_path):
    lm, state = tiny_lm(torch.float32)
    s = model_settings(lm)
    assert set(s) == {"model", "source", "dtype", "weights_hash", "adapter", "torch", "threads"}
    assert (s["model"], s["source"], s["dtype"], s["adapter"]) == ("tiny", "/x/tiny", "float32",
                                                                  None)
    assert s["torch"] == torch.__version__ and s["threads"] == torch.get_num_threads()
    # an fp32 model hashes as the base hash of `train.init_from` (the float32 state dict)
    assert s["weights_hash"] == content_hash(state)
    bf16, _ = tiny_lm(torch.bfloat16)
    rounded = {k: v.to(torch.bfloat16).float() for k, v in state.items()}
    assert model_settings(bf16)["weights_hash"] == content_hash(rounded) != s["weights_hash"]

    adapter = {"lora_A": torch.ones(2, 16, dtype=torch.bfloat16), "lora_B": torch.zeros(16, 2)}
    save_file(adapter, tmp_path / "adapter_model.safetensors")
    assert model_settings(lm, tmp_path)["adapter"] == {"path": str(tmp_path.resolve()),
                                                       "hash": content_hash(adapter)}
    with pytest.raises(LmforgeError, match="has no adapter_model.safetensors"):
        model_settings(lm, tmp_path / "elsewhere")


def test_squad_metric_equals_the_official_script():
    expected = json.loads((SQUAD_FIXTURE / "expected.json").read_text())
    predictions = json.loads((SQUAD_FIXTURE / "predictions.json").read_text())
    questions = load_squad(SQUAD_FIXTURE)
    assert [q.id for q in questions] == list(expected["per_question"]) == list(predictions)
    em = [100 * exact_match(predictions[q.id], q.answers) for q in questions]
    f = [100 * f1(predictions[q.id], q.answers) for q in questions]
    for q, e, x in zip(questions, em, f, strict=True):
        official = expected["per_question"][q.id]
        assert e == pytest.approx(official["exact_match"], abs=1e-9), q.id
        assert x == pytest.approx(official["f1"], abs=1e-9), q.id
    assert sum(em) / len(em) == pytest.approx(expected["overall"]["exact_match"], abs=1e-9)
    assert sum(f) / len(f) == pytest.approx(expected["overall"]["f1"], abs=1e-9)
    assert 0 < expected["overall"]["exact_match"] < expected["overall"]["f1"] < 100
