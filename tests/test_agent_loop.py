"""The ReAct loop driven by a scripted brain: every tool and error path, deterministically."""

from __future__ import annotations

import pytest

from lmforge.agent.calls import ToolCall, render_calls
from lmforge.agent.loop import ScriptedBrain, agent, run_agents
from lmforge.agent.tools import builtin_tools, tool


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


def call(name: str, **arguments) -> str:
    return render_calls([ToolCall(name, arguments)])


def tools():
    return builtin_tools(["calculator"]) + [explode]


def kinds(result) -> list[str]:
    return [e.kind for e in result.events]


def test_a_call_then_an_answer():
    brain = ScriptedBrain(["I will compute.\n" + call("calculator", expression="1234 * 5678"),
                           "It is 7006652."])
    [r] = run_agents(brain, ["What is 1234 * 5678?"], tools())
    assert (r.answer, r.finish_reason, r.steps) == ("It is 7006652.", "answer", 1)
    assert kinds(r) == ["thought", "call", "observation", "answer"]
    assert r.messages[2] == {"role": "tool", "content": "7006652"}
    first, second = brain.seen
    assert first[0]["role"] == "system" and '"name":"calculator"' in first[0]["content"]
    assert second[-1] == {"role": "tool", "content": "7006652"}


@pytest.mark.parametrize("turn, observation", [
    ("<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": }\n</tool_call>",
     "error: the tool call is not valid JSON"),
    (call("weather", city="Oslo"), "error: there is no tool 'weather'; the tools are "
                                   "calculator, explode"),
    (call("calculator", expr="1+1"), "error: calculator has no argument 'expr'"),
    (call("calculator", expression=12), "error: calculator: argument 'expression' must be a "
                                        "string, got 12"),
    (call("calculator", expression="1/0"), "error: division by zero in '1/0'"),
    (call("explode", reason="boom"), "error: explode failed: RuntimeError: boom"),
])
def test_errors_become_observations(turn, observation):
    [r] = run_agents(ScriptedBrain([turn, "Sorry."]), ["q"], tools())
    assert r.messages[2]["role"] == "tool" and r.messages[2]["content"].startswith(observation)
    assert "error" in kinds(r) and r.answer == "Sorry."


def test_parallel_calls_answer_in_order():
    turn = render_calls([ToolCall("calculator", {"expression": "2 + 2"}),
                         ToolCall("nope", {}), ToolCall("calculator", {"expression": "3 * 3"})])
    [r] = run_agents(ScriptedBrain([turn, "4 and 9"]), ["q"], tools())
    assert [m["content"] for m in r.messages[2:5]] == [
        "4", "error: there is no tool 'nope'; the tools are calculator, explode", "9"]
    assert r.steps == 1


def test_step_limit():
    loop = call("calculator", expression="1 + 1")
    [r] = run_agents(ScriptedBrain([loop] * 3), ["q"], tools(), max_steps=3)
    assert (r.answer, r.finish_reason, r.steps) == (None, "max_steps", 3)


def test_batched_agents_advance_together():
    brain = ScriptedBrain([call("calculator", expression="6 * 7"), "direct answer",
                           "42"])  # round 1: both agents; round 2: the first only
    a, b = run_agents(brain, ["six times seven?", "hello?"], tools())
    assert (a.answer, a.steps, b.answer, b.steps) == ("42", 1, "direct answer", 0)
    assert [m[-1]["content"] for m in brain.seen] == ["six times seven?", "hello?", "42"]


def test_generator_protocol_and_history():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    run = agent("2+3?", tools(), history=history, system="Be brief.")
    messages = next(run)
    assert messages[0]["content"].startswith("Be brief.\n\nYou can call tools.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    with pytest.raises(StopIteration) as stop:
        run.send("5")
    result = stop.value.value
    assert result.answer == "5" and result.events[0].t >= 0
