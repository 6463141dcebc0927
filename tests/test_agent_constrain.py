"""Constrained tool calls: every prefix of a schema-conforming call is accepted and nothing
else is; with the real SmolLM2, greedy decoding under the processor always gives a call
that parses and conforms, even where the untuned model would write anything."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.agent.calls import ToolCall, parse_calls, to_chat_messages
from lmforge.agent.constrain import tool_call_processor
from lmforge.agent.schema_automaton import can_end, feed, start
from lmforge.errors import LmforgeError

SCALARS = {"string": st.text(max_size=20), "integer": st.integers(-10**12, 10**12),
           "number": st.floats(allow_nan=False, allow_infinity=False),
           "boolean": st.booleans()}


def conforms(value, schema: dict) -> bool:
    """A strict check of the schema subset the tests generate."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "object":
        props = schema["properties"]
        return (isinstance(value, dict) and set(value) <= set(props)
                and set(schema.get("required", [])) <= set(value)
                and all(conforms(v, props[k]) for k, v in value.items()))
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema["items"]) for v in value)
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", 10**9)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, bool)


leaf = st.one_of(st.sampled_from([{"type": k} for k in SCALARS]),
                 st.lists(st.text("abc", min_size=1, max_size=3), min_size=1, max_size=3,
                          unique=True).map(lambda e: {"type": "string", "enum": e}))
prop = st.one_of(leaf, leaf.map(lambda s: {"type": "array", "items": s}))
schemas = st.dictionaries(st.text("xyz_", min_size=1, max_size=4), prop, max_size=4).flatmap(
    lambda props: (st.lists(st.sampled_from(sorted(props)), unique=True) if props
                   else st.just([])).map(
        lambda req: {"type": "object", "properties": props, "required": req}))


def value_of(schema: dict):
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema["type"] == "array":
        return st.lists(value_of(schema["items"]), max_size=4)
    if schema["type"] == "object":
        props, req = schema["properties"], schema["required"]
        return st.fixed_dictionaries({k: value_of(props[k]) for k in req},
                                     optional={k: value_of(v) for k, v in props.items()
                                               if k not in req})
    return SCALARS[schema["type"]]


def spec(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


@st.composite
def tools_and_call(draw):
    schema = draw(schemas)
    args = draw(value_of(schema))
    other = spec("other", {"type": "object", "properties": {}})
    return [spec("tool", schema), other], ToolCall("tool", args)


@settings(max_examples=150, deadline=None)
@given(tools_and_call(), st.sampled_from(["auto", "required", "tool"]),
       st.sampled_from([None, (",", ":")]))
def test_every_prefix_of_a_conforming_call_is_accepted(case, mode, separators):
    tools, call = case
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False,
                      separators=(", ", ": "))
    if separators:  # the arguments written compactly: whitespace is optional inside them
        inner = json.dumps(call.arguments, ensure_ascii=False, separators=separators)
        body = f'{{"name": "tool", "arguments": {inner}}}'
    text = f"<tool_call>\n{body}\n</tool_call>"
    if mode == "auto":
        text = "Let me <compute> that.\n" + text
    stack = start(tools, mode)
    for i, ch in enumerate(text):
        stack = feed(stack, ch)
        assert stack is not None, text[:i + 1]
        assert not can_end(stack) or i < text.index("<tool_call>") + 10 or i == len(text) - 1
    assert can_end(stack)
    parsed = parse_calls(text).calls
    assert len(parsed) == 1 and conforms(parsed[0].arguments, tools[0]["function"]["parameters"])


CALC = spec("calculator", {"type": "object", "properties": {
    "expression": {"type": "string", "maxLength": 30}}, "required": ["expression"]})
CONVERT = spec("convert", {"type": "object", "properties": {
    "value": {"type": "number"}, "unit": {"type": "string", "enum": ["km", "mi"]},
    "tags": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
    "required": ["value", "unit"]})
HEAD = '<tool_call>\n{"name": "convert", "arguments": '


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "calc"}',  # no such tool
    HEAD + '{"value": "5"',  # a string for a number
    HEAD + '{"unit": "cm"',  # not in the enum
    HEAD + '{"speed": 1',  # no such argument
    HEAD + '{"value": 1}',  # the required unit is missing
    HEAD + '{"value": 1, "value": 2',  # a key twice
    HEAD + '{"value": 01',  # not a JSON number
    HEAD + '{"value": 1,  "unit"',  # two whitespace characters
    HEAD + '{"value": 1, "unit": "km", "tags": [1, 2, 3, 4',  # over maxItems
    HEAD + '{"value": 1, "unit": "km"}}\n</tool_call>x',  # a single call, then the end
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "' + "1" * 31,
])
def test_invalid_continuations_are_rejected(text):
    assert feed(start([CALC, CONVERT], "auto", max_calls=1), text) is None


def test_forced_modes_allow_no_free_text():
    assert feed(start([CALC, CONVERT], "required"), "Sure") is None
    assert feed(start([CALC, CONVERT], "convert"), '<tool_call>\n{"name": "calc') is None
    assert feed(start([CALC, CONVERT], "auto"), "Sure, <b>bold</b>") is not None
    assert not can_end(start([CALC], "required")) and can_end(start([CALC], "auto"))


def test_bad_tools_are_refused():
    with pytest.raises(LmforgeError, match="neither auto"):
        start([CALC], "search")
    with pytest.raises(LmforgeError, match="at least one tool"):
        start([], "auto")
    with pytest.raises(LmforgeError, match="unknown type"):
        start([spec("f", {"type": "object", "properties": {"x": {"type": "date"}}})])


@pytest.mark.parametrize("question", ["Write a poem about cats.", "What is 1234 * 5678?",
                                      "Convert 5 km to miles, then list three tags."])
@pytest.mark.parametrize("mode", ["required", "convert"])
def test_greedy_smollm2_always_writes_a_valid_call(smollm2, question, mode):
    from lmforge.generate.config import GenerationConfig
    from lmforge.generate.engine import Engine

    tok = smollm2.tokenizer
    ids = tok.apply_chat_template(to_chat_messages([{"role": "user", "content": question}],
                                                   [CALC, CONVERT]))
    proc = tool_call_processor(tok, [CALC, CONVERT], mode, parallel=False)
    config = GenerationConfig(max_tokens=160, temperature=0)
    out = "".join(d.text for d in Engine(smollm2.model, tok).stream([ids], config, [proc]))
    parsed = parse_calls(out)
    assert not parsed.errors and len(parsed.calls) == 1, out
    call = parsed.calls[0]
    schema = {"calculator": CALC, "convert": CONVERT}[call.name]["function"]["parameters"]
    assert conforms(call.arguments, schema), out
    assert mode == "required" or call.name == mode
    assert out.startswith("<tool_call>\n") and out.rstrip().endswith("</tool_call>")
