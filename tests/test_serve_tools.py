"""Tool calling in the chat API, driven by the official `openai` client against a live server
with SmolLM2: tools, tool_choice (auto, none, required, a named function),
parallel_tool_calls, tool_calls whole and streamed, and a history with tool messages. Plus
the request checks and the streaming splitter."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import KEY, live_server, openai_client

from lmforge.agent.calculator import calculate
from lmforge.agent.calls import ToolCall, prompt_ids, render_calls
from lmforge.errors import LmforgeError
from lmforge.serve.schemas import APIError
from lmforge.serve.tools import CallStream, parse_tools

CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression exactly.",
    "parameters": {"type": "object", "properties": {
        "expression": {"type": "string", "maxLength": 40,
                       "description": "e.g. 12 * (3 + 4)"}},
        "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city today.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
ASK = [{"role": "user", "content": "What is 1234 * 5678? Use the calculator."}]


@pytest.fixture(scope="module")
def server(smollm2):
    with live_server([smollm2], ctx=1024, max_batch=8, max_queue=16, kv_cache_gb=0.3) as info:
        yield info


@pytest.fixture
def client(server):
    return openai_client(server)


def ask(client, **fields):
    fields = {"model": "smollm2", "messages": ASK, "max_tokens": 96, "temperature": 0,
              **fields}
    return client.chat.completions.create(**fields)


def check_call(call, tool: dict) -> dict:
    """A returned call: OpenAI's shape, a listed name, arguments of the tool's schema."""
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    args = json.loads(call.function.arguments)
    params = tool["function"]["parameters"]
    assert set(args) == set(params["required"]) and all(isinstance(v, str) for v in args.values())
    for name, value in args.items():
        assert len(value) <= params["properties"][name].get("maxLength", 10**9)
        assert value in params["properties"][name].get("enum", [value])
    return args


# --- the official client against the live server ---

def test_required_returns_a_valid_call(client):
    r = ask(client, tools=[CALC], tool_choice="required", parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call, CALC)


def test_named_function_is_the_one_called(client):
    r = ask(client, tools=[CALC, WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": "Is it warm in Paris?"}])
    calls = r.choices[0].message.tool_calls  # several calls may run out of max_tokens
    assert calls and r.choices[0].finish_reason in ("tool_calls", "length")
    for call in calls:
        check_call(call, WEATHER)


def test_parallel_false_gives_one_call(client):
    r = ask(client, tools=[CALC, WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


def test_streamed_calls_equal_the_whole_answer(client):
    whole = ask(client, tools=[CALC, WEATHER], tool_choice="required").choices[0]
    calls: dict[int, dict] = {}
    reasons, content = [], ""
    for chunk in ask(client, tools=[CALC, WEATHER], tool_choice="required", stream=True):
        for c in chunk.choices:
            reasons.append(c.finish_reason)
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:  # OpenAI's accumulation rule
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
    assert [r for r in reasons if r] == [whole.finish_reason]
    assert content.strip() == (whole.message.content or "")
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_none_hides_the_tools(smollm2, client):
    r = ask(client, tools=[CALC], tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None
    assert r.usage.prompt_tokens == len(smollm2.tokenizer.apply_chat_template(ASK))


def test_auto_answers_in_the_right_shape(smollm2, client):
    r = ask(client, tools=[CALC])
    message, reason = r.choices[0].message, r.choices[0].finish_reason
    assert r.usage.prompt_tokens == len(prompt_ids(smollm2.tokenizer, ASK, [CALC]))
    if message.tool_calls:
        assert reason == "tool_calls"
        for call in message.tool_calls:
            check_call(call, CALC)
    else:
        assert reason in ("stop", "length") and isinstance(message.content, str)


def test_an_agent_loop_over_the_api(smollm2, client):
    """What an OpenAI agent framework does: call, run the tool, send the result back."""
    first = ask(client, tools=[CALC], tool_choice="required", parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    expression = json.loads(call.function.arguments)["expression"]
    try:
        observation = calculate(expression)
    except LmforgeError as exc:  # a malformed expression: the agent reports the error back
        observation = f"error: {exc}"
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": str(observation)}]
    second = ask(client, tools=[CALC], tool_choice="none", messages=history, max_tokens=16)
    assert isinstance(second.choices[0].message.content, str)
    rendered = [*ASK, {"role": "assistant", "content": render_calls(
        [ToolCall(call.function.name, json.loads(call.function.arguments))])},
        {"role": "tool", "content": str(observation)}]
    assert second.usage.prompt_tokens == len(smollm2.tokenizer.apply_chat_template(rendered))


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
     "tools[0].function.name"),
    ({"tools": [CALC, CALC]}, "tools"),
    ({"tools": [CALC], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [CALC], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [CALC], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "date"}}}}}]},
     "tools[0].function.parameters"),
    ({"messages": [{"role": "tool", "content": "4"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]},
     "messages[0].tool_calls[0]"),
    ({"tools": [CALC], "num_beams": 2}, "num_beams"),
], ids=["no function", "bad name", "duplicate", "bad choice", "unknown named", "choice alone",
        "parallel type", "bad schema", "tool without id", "user with calls", "bad call",
        "beams"])
def test_bad_tool_requests_are_400(server, fields, param):
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 4, **fields}
    r = httpx.post(server.url + "/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_parse_tools_defaults():
    assert parse_tools({}) is None and parse_tools({"tools": [], "tool_choice": "none"}) is None
    req = parse_tools({"tools": [CALC]})
    assert (req.choice, req.parallel, req.active) == ("auto", True, True)
    assert parse_tools({"tools": [CALC], "tool_choice": "none"}).active is False
    with pytest.raises(APIError):
        parse_tools({"tools": {"type": "function"}})


# --- the streaming splitter ---

TURN = ("Let me work it out <step>.\n"
        + render_calls([ToolCall("calculator", {"expression": "1234 * 5678"}),
                        ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})])
        + "\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(TURN)), max_size=12))
def test_call_stream_equals_the_whole_split(cuts):
    """However the text is cut into pieces, the stream gives the whole split's calls and
    the content before them, with nothing held back at the end."""
    cuts = sorted(set(cuts))
    pieces = [TURN[a:b] for a, b in zip([0, *cuts], [*cuts, len(TURN)], strict=True)]
    stream, content, calls = CallStream(parallel=True), "", []
    for i, piece in enumerate(pieces):
        text, done = stream.feed(piece, final=i == len(pieces) - 1)
        content += text
        calls += done
    whole_content, whole_calls = parse_tools({"tools": [CALC, WEATHER]}).split(TURN)
    assert content.strip() == whole_content
    assert [c.to_openai()["function"] for c in calls] == [c["function"] for c in whole_calls]


def test_call_stream_keeps_a_malformed_block_as_text():
    stream = CallStream(parallel=False)
    text, calls = stream.feed("<tool_call>\n{oops}\n</tool_call>", final=True)
    assert calls == [] and "{oops}" in text
    two = render_calls([ToolCall("a", {}), ToolCall("b", {})])
    assert [c.name for c in CallStream(parallel=False).feed(two, final=True)[1]] == ["a"]
