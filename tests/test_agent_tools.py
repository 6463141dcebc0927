"""Tools from typed functions (schema, validation), the built-in specs, and the calculator."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest

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
