"""`lmforge agent`: the console's trace and the command's errors (fast), and the whole command on
the real SmolLM2 with constrained decoding."""

from __future__ import annotations

import pytest

from lmforge.agent.calls import ToolCall, parse_calls, render_calls
from lmforge.agent.console import run_streamed
from lmforge.agent.loop import ScriptedBrain
from lmforge.agent.tools import builtin_tools
from lmforge.cli import main

QUESTION = "What is 1234 * 5678?"


def test_trace_is_labelled_without_a_terminal(capsys):
    turn = render_calls([ToolCall("calculator", {"expression": "1234 * 5678"})])
    result = run_streamed(ScriptedBrain([turn, "It is 7006652."]), QUESTION,
                          builtin_tools(["calculator"]), 3, tty=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[model] <tool_call>"
    assert "[call] calculator(expression='1234 * 5678')" in out
    assert any(line.startswith("[observation] 7006652 (") for line in out)
    assert out[-1] == "[model] It is 7006652." and result.answer == "It is 7006652."


def test_trace_is_coloured_on_a_terminal(capsys):
    run_streamed(ScriptedBrain(["<tool_call>\n{oops}\n</tool_call>", "sorry"] * 2), "q",
                 builtin_tools(["calculator"]), 1, tty=True)
    out = capsys.readouterr().out
    assert "\x1b[31mthe tool call is not valid JSON" in out  # errors in red
    assert "\x1b[31mstopped after 1 steps without an answer\x1b[0m" in out


@pytest.mark.parametrize("argv, message", [
    (["--tool-choice", "weather"], "--tool-choice 'weather' is none of auto, required or the "
                                   "tools (calculator)"),
    (["--tools", "memory"], "--tools search and memory need --db FILE.db"),
    (["--tools", "files"], "--tools files needs --allow DIR"),
])
def test_bad_options_are_clear_errors(capsys, argv, message):
    assert main(["agent", "--model", "smollm2", *argv, QUESTION]) == 2
    assert message in capsys.readouterr().err


def test_constrained_agent_on_smollm2(capsys):
    """The base model answers arithmetic unaided; --tool-choice makes its first turn a call,
    and constrained decoding makes that call valid JSON of the calculator's schema (about 5 s
    on 2 cores, model load included)."""
    argv = ["agent", "--model", "smollm2", "--tools", "calculator", "--constrain",
            "--tool-choice", "required", "--max-steps", "1", "--max-tokens", "48", QUESTION]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("[model] <tool_call>\n{\"name\": \"calculator\", \"arguments\": {")
    first = parse_calls(out).calls[0]
    [calculator] = builtin_tools(["calculator"])
    assert first.name == "calculator" and calculator.validate(first.arguments)
    assert "[call] calculator(expression=" in out
