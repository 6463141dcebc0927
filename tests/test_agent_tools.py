"""Tools from typed functions (schema, validation), the built-in specs, and the calculator."""

from __future__ import annotations

import operator
import re
from fractions import Fraction
from typing import Annotated, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rag_documents import pdf_bytes

from lmforge.agent.calculator import CalculatorError, calculate, evaluate
from lmforge.agent.perception import read_path
from lmforge.agent.tools import ToolArgumentError, builtin_specs, builtin_tools, tool
from lmforge.errors import LmforgeError


@tool
def convert(value: float, unit: Literal["km", "mi"] = "km", tags: list[int] | None = None,
            note: Annotated[str, "a remark"] = "") -> str:
    """Convert a distance.

    This paragraph stays out of the prompt."""
    return f"{value} {unit} {tags} {note}"


def test_schema_from_signature():
    assert convert.spec() == {"type": "function", "function": {
        "name": "convert", "description": "Convert a distance.",
        "parameters": {"type": "object", "properties": {
            "value": {"type": "number"},
            "unit": {"type": "string", "enum": ["km", "mi"]},
            "tags": {"type": "array", "items": {"type": "integer"}},
            "note": {"type": "string", "description": "a remark"}},
            "required": ["value"]}}}


def test_validation_converts_unambiguous_values():
    assert convert.validate({"value": "3", "tags": [1, 2.0], "note": None}) == \
        {"value": 3, "tags": [1, 2]}
    assert convert(**convert.validate({"value": 2.5, "unit": "mi"})) == "2.5 mi None "


@pytest.mark.parametrize("arguments, message", [
    ({}, "convert needs the argument 'value' (a number)"),
    ({"value": "x"}, "argument 'value' must be a number, got \"x\""),
    ({"value": True}, "must be a number, got true"),
    ({"value": 1, "unit": "m"}, 'must be one of "km", "mi"'),
    ({"value": 1, "speed": 2}, "convert has no argument 'speed'; its arguments are: value, unit"),
    ({"value": 1, "tags": ["a"]}, "argument 'tags'[0] must be an integer"),
])
def test_validation_errors_say_what_is_wrong(arguments, message):
    with pytest.raises(ToolArgumentError) as e:
        convert.validate(arguments)
    assert message in str(e.value)


def test_bad_tool_definitions_are_refused():
    def undocumented(x: int) -> str:
        return ""

    def untyped(x) -> str:
        """Doc."""

    def variadic(*xs: int) -> str:
        """Doc."""

    for fn in (undocumented, untyped, variadic):
        with pytest.raises(LmforgeError):
            tool(fn)


def test_builtin_specs_are_the_contract():
    specs = {s["function"]["name"]: s["function"] for s in builtin_specs()}
    assert list(specs) == ["calculator", "python", "search", "read_file", "remember", "recall"]
    assert specs["calculator"]["description"] == \
        "Evaluate an arithmetic expression exactly (+ - * / ** % parentheses, decimals)."
    assert specs["search"]["parameters"] == {
        "type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
        "required": ["query"]}
    assert [t.name for t in builtin_tools(["files", "calculator"])] == ["read_file",
                                                                        "calculator"]
    with pytest.raises(LmforgeError, match="unknown tool set 'web'"):
        builtin_tools(["web"])


# the calculator: exact against fractions.Fraction on random expression trees

def _leaf():
    whole = st.integers(0, 99_999).map(lambda n: (str(n), Fraction(n)))
    decimal = st.tuples(st.integers(0, 999), st.integers(0, 999)).map(
        lambda p: (f"{p[0]}.{p[1]:03d}", Fraction(p[0]) + Fraction(p[1], 1000)))
    return whole | decimal


def _node(children):
    ops = st.sampled_from(["+", "-", "*", "/"])
    binary = st.tuples(children, ops, children).map(lambda t: (
        f"({t[0][0]} {t[1]} {t[2][0]})", _apply(t[1], t[0][1], t[2][1])))
    power = st.tuples(children, st.integers(0, 3)).map(lambda t: (
        f"({t[0][0]}) ** {t[1]}", None if t[0][1] is None else t[0][1] ** t[1]))
    negate = children.map(lambda c: (f"-({c[0]})", None if c[1] is None else -c[1]))
    return binary | power | negate


def _apply(op: str, a: Fraction | None, b: Fraction | None) -> Fraction | None:
    if a is None or b is None or (op == "/" and b == 0):
        return None  # None: a division by zero happened below
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
    return ops[op](a, b)


@settings(max_examples=300, deadline=None)
@given(st.recursive(_leaf(), _node, max_leaves=12))
def test_calculator_agrees_with_fractions(case):
    text, expected = case
    if expected is None:
        with pytest.raises(CalculatorError, match="division by zero"):
            evaluate(text)
        return
    try:
        value, exact = evaluate(text)
    except CalculatorError as e:  # a legitimate size guard, never a wrong value
        assert "too large" in str(e)
        return
    assert exact and value == expected


@pytest.mark.parametrize("text, shown", [
    ("12,345 × 6,789", "83810205"), ("1 / 3", "0.3333333333 (rounded)"),
    ("(2.5 + 0.1) * 4", "10.4"), ("0.1 + 0.2", "0.3"), ("84 ÷ 4 − 1", "20"),
    ("2^10", "1024"), ("12 x 3 =", "36"), ("2 ** 0.5", "1.414213562 (rounded)"),
    ("2 ** 200", "1.606938044e60 (rounded)"), ("7 % 3", "1"), ("-7 // 2", "-4"),
    ("1 / 3e20", "3.333333333e-21 (rounded)"), ("3.0", "3"), ("2 ** -3", "0.125"),
])
def test_calculator_output(text, shown):
    assert calculate(text) == shown


@pytest.mark.parametrize("text, message", [
    ("9 ** 9 ** 9", "exponent 387420489 is too large"), ("1 / (2 - 2)", "division by zero"),
    ("5 % 0", "division by zero"), ("0 ** -1", "division by zero"),
    ("__import__('os').system('ls')", "is not arithmetic"), ("x + 1", "'x' is not arithmetic"),
    ("'a' * 3", "is not a number"), ("", "empty"), ("1 +", "not an arithmetic expression"),
    ("(-8) ** (1/3)", "not a real number"), ("2 ** 9999 * 2 ** 9999", "too large"),
    ("(" * 300 + "1" + ")" * 300, "not an arithmetic expression"),
    ("1" * 1001, "at most 1000"),
])
def test_calculator_refuses_with_a_reason(text, message):
    with pytest.raises(CalculatorError, match=re.escape(message)):
        calculate(text)


# read_file: confined to the allowed directories

@pytest.fixture
def allowed(tmp_path):
    root = tmp_path / "allowed"
    (root / "sub").mkdir(parents=True)
    (root / "notes.md").write_text("# Notes\nThe tower is 324 metres tall.\n")
    (root / "sales.csv").write_text("region,units,price\nnorth,120,2.5\nsouth,80,3\n")
    (root / "long.txt").write_text("x" * 5000)
    (root / "doc.pdf").write_bytes(pdf_bytes("Portable text layer"))
    (tmp_path / "secret.txt").write_text("do not read")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


def test_read_file_kinds(allowed):
    assert read_path("notes.md", [allowed]) == "# Notes\nThe tower is 324 metres tall.\n"
    assert read_path("sales.csv", [allowed]) == (
        "sales.csv: CSV, 2 rows, columns: region (text), units (integer), price (number)\n"
        "region,units,price\nnorth,120,2.5\nsouth,80,3")
    assert "Portable text layer" in read_path("doc.pdf", [allowed])
    assert read_path("long.txt", [allowed]).endswith("(cut at 4,000 of 5,000 characters)")
    listing = read_path(".", [allowed]).splitlines()
    assert listing[:3] == [".: directory, 6 entries", "sub/", "doc.pdf (" + listing[2][9:]]
    assert read_path(str(allowed / "notes.md"), [allowed]).startswith("# Notes")


@pytest.mark.parametrize("path, message", [
    ("../secret.txt", "is outside the allowed directories"),
    ("link.txt", "is outside the allowed directories"),
    ("/etc/passwd", "is outside the allowed directories"),
    ("missing.txt", "missing.txt: no such file or directory"),
])
def test_read_file_refuses_outside(allowed, path, message):
    with pytest.raises(LmforgeError, match=re.escape(message)):
        read_path(path, [allowed])


def test_read_file_needs_an_allowed_directory():
    with pytest.raises(LmforgeError, match="--allow DIR"):
        read_path("x.txt", [])
