"""The B/M/E/S tagger: tags and their constrained decoding (properties and a brute-force
reference), windows, OOV recall, a tiny tagger trained through the trainer on an MSR slice,
exact resume, the CLI and its errors."""

from __future__ import annotations

import doctest
import itertools
import json

import pytest
import torch
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.segment import bmes, oov, windows
from lmforge.segment.bmes import ALLOWED, ENDS, STARTS, TAGS, tags_of, valid, viterbi, words_of
from lmforge.segment.corpus import load_config
from lmforge.segment.dictionary import Dictionary
from lmforge.segment.oov import oov_recall
from lmforge.segment.tagger import char_tokenizer, load_tagger, train_tagger
from lmforge.segment.windows import Tagged, TagRows, fullwidth, match_bits, spans

MSR = SHARED_DATA / "icwb2-msr"
HAN = st.characters(min_codepoint=0x4E00, max_codepoint=0x4E60)
WORDS = st.lists(st.text(HAN, min_size=1, max_size=5), max_size=12)


@pytest.mark.parametrize("module", [bmes, windows, oov])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


@given(WORDS)
def test_bmes_round_trip(words):
    tags = tags_of(words)
    assert len(tags) == len("".join(words)) and valid(tags)
    assert words_of("".join(words), tags) == words


def best_valid(scores: torch.Tensor) -> tuple[float, str]:
    """The best valid tag string by enumerating all 4^T of them (the reference)."""
    best = (float("-inf"), "")
    for path in itertools.product(range(4), repeat=scores.shape[0]):
        tags = "".join(TAGS[k] for k in path)
        if valid(tags):
            best = max(best, (float(sum(scores[i, k] for i, k in enumerate(path))), tags))
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_viterbi_is_the_best_valid_sequence(t, seed):
    scores = torch.randn(3, t, 4, generator=torch.Generator().manual_seed(seed)) * 3
    lengths = torch.tensor([t, max(1, t - 1), 1])
    for row, tags in enumerate(viterbi(scores, lengths)):
        n = int(lengths[row])
        assert len(tags) == n and valid(tags)
        ref_score, _ = best_valid(scores[row, :n])
        got = sum(float(scores[row, i, TAGS.index(c)]) for i, c in enumerate(tags))
        assert got == pytest.approx(ref_score, abs=1e-4)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_viterbi_never_emits_an_invalid_sequence(t, seed):
    """Even when the scores favour invalid tags everywhere (M after S, a final B)."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, t, 4, generator=gen)
    scores[1, :, bmes.M] += 50  # all M: invalid anywhere
    scores[2, :, bmes.B] += 50  # all B: invalid at the end
    lengths = torch.randint(1, t + 1, (4,), generator=gen)
    for row, tags in enumerate(viterbi(scores, lengths)):
        assert len(tags) == int(lengths[row]) and valid(tags)


def test_transition_table():
    assert [TAGS[i] for i in range(4) if STARTS[i]] == ["B", "S"]
    assert [TAGS[i] for i in range(4) if ENDS[i]] == ["E", "S"]
    assert {TAGS[a] + TAGS[b] for a in range(4) for b in range(4) if ALLOWED[a, b]} == {
        "BM", "BE", "MM", "ME", "EB", "ES", "SB", "SS"}
    assert not valid("SM") and not valid("BS") and not valid("B") and valid("")


@given(st.text(st.sampled_from("甲乙丙丁，。!"), max_size=80), st.integers(2, 10))
def test_spans_cover_the_text(text, max_len):
    cut = spans(text, max_len)
    assert "".join(text[a:b] for a, b in cut) == text
    assert all(0 < b - a <= max_len for a, b in cut)


def test_fullwidth():
    assert fullwidth("a1, 中") == "ａ１，\u3000中"


FOUR = st.sampled_from("甲乙丙丁")


@given(st.text(FOUR, max_size=12), st.lists(st.text(FOUR, min_size=1, max_size=5), min_size=1,
                                             max_size=8))
def test_match_bits_by_definition(text, words):
    d = Dictionary(words)
    expect = [0] * len(text)
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            if text[i:j] in d.words:
                k = min(j - i, 4) - 1
                expect[i] |= 1 << k
                expect[j - 1] |= 1 << (4 + k)
    assert match_bits(text, d) == expect


def test_dictionary_rows_hide_words_at_the_oov_rate():
    words = ["甲乙", "丙丁"]  # no word contains another: a hidden word leaves no bits
    tok = char_tokenizer(words, 1)
    gen = torch.Generator().manual_seed(0)
    for rate, hidden in ((0.0, False), (1.0, True)):
        rows = TagRows(Tagged([], [], []), tok, words, 8, 1.0, Dictionary(words), rate)
        batch = rows(gen, 4)
        assert batch["labels"].shape == batch["bits"].shape
        assert bool((batch["bits"] == 0).all()) == hidden


def test_oov_recall_counts_only_missing_words_and_skips_bad_lines():
    gold = ["张三 去 北京", "李四 来", "王五"]
    pred = ["张 三 去 北京", "李四 来", "王六"]  # the last line's characters differ
    r = oov_recall(gold, pred, {"去", "北京", "来"})
    assert (r.correct, r.total) == (1, 2)


@pytest.fixture(scope="module")
def msr_slice(tmp_path_factory):
    """The first 400 gold MSR test lines: 300 to train on, 100 held out, and their words as
    the dictionary (the MSR training sentences are not in shared/data)."""
    d = tmp_path_factory.mktemp("msr")
    lines = (MSR / "msr_test_gold.utf8").read_text(encoding="utf-8").splitlines()[:400]
    (d / "train.txt").write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    (d / "held.txt").write_text("\n".join(lines[300:]) + "\n", encoding="utf-8")
    words = sorted({w for line in lines[:300] for w in line.split()})
    (d / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return d


def write_config(d, out: str, steps: int, d_model: int = 32, features: bool = True) -> str:
    (d / f"{out}.toml").write_text(f"""
[model]
d_model = {d_model}
n_layer = 1
n_head = 2
[tagger]
dict = "words.txt"
gold = ["train.txt"]
max_len = 32
dict_share = 0.2
val_every = 10
dict_features = {str(features).lower()}
[train]
out_dir = "{out}"
batch_size = 16
max_steps = {steps}
warmup_steps = 5
lr = 5e-3
eval_every = {steps // 2}
eval_batches = 2
log_every = 5
threads = 1
""", encoding="utf-8")
    return str(d / f"{out}.toml")


@pytest.fixture(scope="module")
def tiny_run(msr_slice):
    return train_tagger(write_config(msr_slice, "run", 80), progress=False)


def test_tiny_tagger_beats_chance_on_held_out_tags(tiny_run, msr_slice):
    held = [line.split() for line in (msr_slice / "held.txt").read_text("utf-8").splitlines()]
    gold = "".join(tags_of(words) for words in held)
    tagger = load_tagger(tiny_run)
    pred = "".join(tags_of(words) for words in tagger.segment(["".join(w) for w in held]))
    accuracy = sum(a == b for a, b in zip(gold, pred, strict=True)) / len(gold)
    majority = max(gold.count(t) for t in TAGS) / len(gold)
    assert accuracy > majority + 0.05, (accuracy, majority)
    for name in ("metrics.jsonl", "loss.png", "tagger.json", "best/train_state.pt"):
        assert (tiny_run / name).exists()


def test_resume_is_exact(msr_slice):
    straight = train_tagger(write_config(msr_slice, "straight", 8, 16), progress=False)
    paused = write_config(msr_slice, "paused", 8, 16)
    train_tagger(paused, stop_after=4, progress=False)
    resumed = train_tagger(paused, resume=True, progress=False)
    for run in (straight, resumed):
        assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if "val_loss" in x] == [4, 8]
    a, b = (load_tagger(run) for run in (straight, resumed))
    for x, y in ((a.model, b.model), (a.heads, b.heads)):
        sa, sb = x.state_dict(), y.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(LmforgeError, match="--resume"):
        train_tagger(paused, progress=False)


def test_tagger_without_dictionary_features(msr_slice):
    run = train_tagger(write_config(msr_slice, "plain", 6, 16, features=False), progress=False)
    tagger = load_tagger(run)
    assert tagger.dictionary is None and "bits" not in tagger.heads
    assert "".join(tagger.segment(["希腊的经济结构较特殊。"])[0]) == "希腊的经济结构较特殊。"


def test_cli_segment_with_model_and_score(tiny_run, msr_slice, tmp_path, capsys):
    held = msr_slice / "held.txt"
    raw = tmp_path / "raw.txt"
    raw.write_text("".join("".join(line.split()) + "\n"
                           for line in held.read_text("utf-8").splitlines()), encoding="utf-8")
    out = tmp_path / "out.txt"
    assert main(["segment", "--model", str(tiny_run), "--input", str(raw),
                 "--output", str(out)]) == 0
    assert out.read_text("utf-8").replace(" ", "") == raw.read_text("utf-8")
    capsys.readouterr()
    assert main(["segment-score", "--gold", str(held), "--pred", str(out),
                 "--dict", str(msr_slice / "words.txt"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["skipped"] == 0 and record["oov"]["total"] > 0
    assert 0 < record["f1"] <= 1 and 0 <= record["oov"]["recall"] <= 1


def test_cli_refuses_a_run_that_is_not_a_tagger(tmp_path, capsys):
    (tmp_path / "best").mkdir()
    assert main(["segment", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a segmentation tagger run" in err and "segment-train" in err
    with pytest.raises(SystemExit):  # --model or --dict, not both
        main(["segment", "--model", str(tmp_path), "--dict", "x"])


def test_config_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nd_model = 8\n[tagger]\ndict = \"w.txt\"\n[data]\ndir = \"x\"\n")
    with pytest.raises(LmforgeError, match="unknown table"):
        load_config(path)
    path.write_text("[tagger]\ndict = \"w.txt\"\n")
    with pytest.raises(LmforgeError, match="no sentences"):
        load_config(path)
    path.write_text("[tagger]\ndict = \"w.txt\"\ndict_share = 1.0\nmax_len = 16\n")
    run, s = load_config(path)
    assert s.dict == str((tmp_path / "w.txt").resolve()) and run.train.block_size == 16
