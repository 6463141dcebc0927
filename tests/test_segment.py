"""Maximum matching segmentation and SIGHAN scoring: hand-made cases, properties, the CLI and
the real MSR bakeoff data."""

from __future__ import annotations

import io
import json

import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.segment import Dictionary, bimm, bmm, fmm, score_lines, segment, segment_lines
from lmforge.segment.dictionary import build_trie
from lmforge.segment.maxmatch import bimm_cost

MSR = SHARED_DATA / "icwb2-msr"


def naive_fmm(text: str, words: set[str]) -> list[str]:
    """FMM by its definition: try every length from the longest down."""
    out, i = [], 0
    while i < len(text):
        n = next((n for n in range(len(text) - i, 1, -1) if text[i:i + n] in words), 1)
        out.append(text[i:i + n])
        i += n
    return out


def naive_bmm(text: str, words: set[str]) -> list[str]:
    out, j = [], len(text)
    while j > 0:
        n = next((n for n in range(j, 1, -1) if text[j - n:j] in words), 1)
        out.append(text[j - n:j])
        j -= n
    return out[::-1]


# --- hand-made dictionaries -------------------------------------------------------------

def test_forward_and_backward_on_an_overlap_ambiguity():
    d = Dictionary(["研究", "研究生", "生命", "起源"])
    assert fmm("研究生命起源", d) == ["研究生", "命", "起源"]
    assert bmm("研究生命起源", d) == ["研究", "生命", "起源"]


def test_longest_word_wins_and_unknown_characters_stand_alone():
    d = Dictionary(["中国", "中国人", "中国人民银行", "人民", "银行"])
    assert fmm("中国人民银行行长", d) == ["中国人民银行", "行", "长"]
    assert fmm("中国人民", d) == ["中国人", "民"]  # 中国人民 is a prefix of a word, not a word
    assert bmm("中国人民", d) == ["中国", "人民"]
    assert fmm("", d) == bmm("", d) == bimm("", d) == []


@pytest.mark.parametrize("words, text, rule, winner", [
    (["abc", "cd"], "abcd", "fewer words", "fmm"),            # abc|d vs a|b|cd
    (["ab", "bcd"], "abcd", "fewer words", "bmm"),            # ab|c|d vs a|bcd
    (["ab", "cd", "ef", "bc", "def"], "abcdef", "fewer singles", "fmm"),  # ab|cd|ef, a|bc|def
    (["研究", "研究生", "生命", "起源"], "研究生命起源", "fewer singles", "bmm"),
    (["ab", "bc", "c"], "abc", "fewer unknown", "fmm"),       # ab|c vs a|bc, only c known
    (["ab", "bc", "a"], "abc", "fewer unknown", "bmm"),       # only a known
    (["ab", "bc"], "abc", "tie", "bmm"),                      # ab|c vs a|bc, both unknown
])
def test_bimm_tie_break_rules(words, text, rule, winner):
    d = Dictionary(words)
    f, b = bimm_cost(fmm(text, d), d), bimm_cost(bmm(text, d), d)
    deciding = {"fewer words": 0, "fewer singles": 1, "fewer unknown": 2, "tie": 3}[rule]
    assert f[:deciding] == b[:deciding]  # every earlier rule ties, so this one decides
    if rule == "tie":
        assert f == b
    else:
        assert f[deciding] != b[deciding]
    assert bimm(text, d) == (fmm if winner == "fmm" else bmm)(text, d)
    assert fmm(text, d) != bmm(text, d)


def test_shared_trie_leaves_are_never_extended():
    # "ab" ends in a shared leaf until "abc" arrives; "xy" must not gain the "c"
    trie = build_trie(["xy", "ab", "abc"])
    assert "c" not in trie["x"]["y"] and "c" in trie["a"]["b"]
    d = Dictionary(["xy", "ab", "abc"])
    assert fmm("xyc", d) == ["xy", "c"] and fmm("abc", d) == ["abc"]


def test_whitespace_separates_and_is_dropped():
    d = Dictionary(["研究", "生命"])
    assert segment(" 研究\t生命 研\u3000究 ", d, "fmm") == ["研究", "生命", "研", "究"]
    lines = list(segment_lines(["研究生命\r\n", "\n", "ab  c\n"], d, "bimm"))
    assert lines == ["研究 生命", "", "a b c"]
    with pytest.raises(LmforgeError, match="unknown segmentation mode"):
        segment("x", d, "mmseg")


# --- properties --------------------------------------------------------------------------

CHARS = "中国人民银行研究生命起源的了一" + "abAB12" + "，。！？,.-%"
WORDS = st.text(alphabet=CHARS, min_size=1, max_size=4)
LINES = st.text(alphabet=CHARS + " \t\u3000", max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.sets(WORDS, max_size=30), LINES)
def test_characters_never_change_and_matching_is_maximal(words, line):
    words.add("中")  # a dictionary is never empty
    d = Dictionary(words)
    run = "".join(line.split())
    assert fmm(run, d) == naive_fmm(run, words)
    assert bmm(run, d) == naive_bmm(run, words)
    for mode in ("fmm", "bmm", "bimm"):
        out = segment(line, d, mode)
        assert "".join(out) == run
        assert all(w in words or len(w) == 1 for w in out)
        assert all(w and not any(c.isspace() for c in w) for w in out)


# --- dictionary files ---------------------------------------------------------------------

def test_dictionary_files_word_list_and_jieba_format(tmp_path):
    plain = tmp_path / "words.txt"
    plain.write_text("\ufeff中国\n\n人民\n", encoding="utf-8")
    jieba = tmp_path / "dict.txt"
    jieba.write_text("中国 3 ns\n人民 12\n银行 7 n\n", encoding="utf-8")
    assert Dictionary.load(plain).words == {"中国", "人民"}
    assert Dictionary.load(jieba).words == {"中国", "人民", "银行"}


@pytest.mark.parametrize("content, message", [
    ("中国 three\n", "integer frequency"),
    ("中国 1 ns extra\n", "line 1"),
    ("\n \n", "holds no words"),
    (b"\xd6\xd0\xb9\xfa\n", "not UTF-8"),  # GBK bytes
])
def test_bad_dictionary_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "dict.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(LmforgeError, match=message):
        Dictionary.load(path)
    with pytest.raises(LmforgeError, match="no such file"):
        Dictionary.load(tmp_path / "missing.txt")
    with pytest.raises(LmforgeError, match="whitespace"):
        Dictionary(["中 国"])


# --- scoring ------------------------------------------------------------------------------

def test_scores_by_hand():
    s = score_lines(["a bc d", "研究 生命 起源"], ["a b c d", "研究生 命 起源"])
    # line 1: gold (0,1)(1,3)(3,4), pred (0,1)(1,2)(2,3)(3,4): 2 correct
    # line 2: gold (0,2)(2,4)(4,6), pred (0,3)(3,4)(4,6): 1 correct
    assert (s.correct, s.gold_words, s.pred_words) == (3, 6, 7)
    assert s.precision == pytest.approx(3 / 7) and s.recall == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 * (3 / 7) * 0.5 / (3 / 7 + 0.5))
    perfect = score_lines(["中国 人民"], [" 中国  人民\r\n"])
    assert perfect.precision == perfect.recall == perfect.f1 == 1.0


def test_mismatched_lines_are_skipped_and_counted():
    s = score_lines(["ab c", "xy", "p q", "u"], ["a bc", "x", "p q", "v"])
    assert (s.lines, s.skipped, s.skipped_lines) == (4, 2, [2, 4])
    # scored: "ab c" vs "a bc" (no common span) and "p q" vs "p q" (two)
    assert (s.correct, s.gold_words, s.pred_words) == (2, 4, 4)
    with pytest.raises(LmforgeError, match="fewer lines"):
        score_lines(["a", "b"], ["a"])
    assert score_lines([], []).f1 == 0.0


# --- command line -------------------------------------------------------------------------

def test_cli_segment_and_score_round_trip(tmp_path, capsys, monkeypatch):
    (tmp_path / "d.txt").write_text("研究 5\n研究生 2\n生命 9\n起源 1\n", encoding="utf-8")
    (tmp_path / "in.txt").write_text("研究生命起源\n\n研究 生命。\n", encoding="utf-8")
    (tmp_path / "gold.txt").write_text("研究 生命 起源\n\n研究 生命 。\n", encoding="utf-8")
    args = ["segment", "--dict", str(tmp_path / "d.txt"), "--input", str(tmp_path / "in.txt")]
    assert main([*args, "--mode", "bimm", "--output", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == \
        "研究 生命 起源\n\n研究 生命 。\n"
    assert main(["segment-score", "--gold", str(tmp_path / "gold.txt"),
                 "--pred", str(tmp_path / "out.txt"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["f1"] == 1.0 and record["skipped"] == 0 and record["correct"] == 6

    assert main(args + ["--mode", "fmm"]) == 0  # to stdout
    assert capsys.readouterr().out == "研究生 命 起源\n\n研究 生命 。\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("研究生命\n"))
    assert main(["segment", "--dict", str(tmp_path / "d.txt"), "--mode", "bmm"]) == 0
    assert capsys.readouterr().out == "研究 生命\n"

    assert main(["segment-score", "--gold", str(tmp_path / "gold.txt"),
                 "--pred", str(tmp_path / "in.txt")]) == 0
    out = capsys.readouterr().out  # 1 of 3 predicted words right, of 6 gold: F1 = 2/9
    assert "F1 0.2222" in out and "skipped 0" in out
    assert main(["segment", "--dict", str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["segment-score", "--gold", str(tmp_path / "nope.txt"),
                 "--pred", str(tmp_path / "out.txt")]) == 2
    assert "--gold" in capsys.readouterr().err


# --- the real SIGHAN 2005 MSR test set -----------------------------------------------------

@pytest.fixture(scope="module")
def msr():
    dictionary = Dictionary.load(MSR / "msr_training_words.utf8")
    text = (MSR / "msr_test.utf8").read_text(encoding="utf-8").splitlines()
    gold = (MSR / "msr_test_gold.utf8").read_text(encoding="utf-8").splitlines()
    return dictionary, text, gold


@pytest.mark.parametrize("mode", ["fmm", "bmm", "bimm"])
def test_msr_f1_near_the_bakeoff_figure(msr, mode):
    dictionary, text, gold = msr
    s = score_lines(gold, segment_lines(text, dictionary, mode))
    assert s.lines == 3985 and s.skipped == 16  # the 16 truncated gold lines of the README
    assert s.f1 == pytest.approx(0.937, abs=0.005)
