"""The ReAct loop driven by a scripted brain: every tool and error path, deterministically."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmforge.agent.calls import ToolCall, render_calls
from lmforge.agent.loop import Conversation, LLMBrain, ScriptedBrain, agent, run_agents
from lmforge.agent.tools import builtin_tools, tool
from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Delta
from lmforge.interop.gguf import read_gguf_metadata
from lmforge.tokenizers import BPETokenizer

QWEN = json.loads((Path(__file__).parent / "fixtures" / "qwen2_5_instruct_chat_template.json")
                  .read_text(encoding="utf-8"))["chat_template"]


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
    assert [t["function"]["name"] for t in first.tools] == ["calculator", "explode"]
    assert first.messages == [{"role": "user", "content": "What is 1234 * 5678?"}]
    assert second.messages[-1] == {"role": "tool", "content": "7006652"}


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
    assert [c.messages[-1]["content"] for c in brain.seen] == ["six times seven?", "hello?",
                                                                "42"]


def test_generator_protocol_and_history():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    run = agent("2+3?", tools(), history=history, system="Be brief.")
    conversation = next(run)
    assert conversation.messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "user"]
    with pytest.raises(StopIteration) as stop:
        run.send("5")
    result = stop.value.value
    assert result.answer == "5" and result.events[0].t >= 0


# -- LLMBrain: prompts through calls.prompt_ids, processors per turn ---------------------------

class RecordingEngine:
    """Stands in for `Engine.stream`: records each batch, answers "ok" per row."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list]] = []

    def stream(self, prompts, config, processors):
        self.batches.append((len(prompts), processors))
        for i in range(len(prompts)):
            yield Delta(i, f"ok{len(self.batches)}", [], "stop")


@pytest.fixture(scope="module")
def meta(smollm2_path) -> dict:
    return read_gguf_metadata(smollm2_path)


def brain_on(meta, template: str | None = None, max_seq_len: int = 2048, **kwargs) -> LLMBrain:
    values = meta if template is None else {**meta, "tokenizer.chat_template": template}
    lm = SimpleNamespace(tokenizer=BPETokenizer.from_gguf_metadata(values),
                         config=SimpleNamespace(max_seq_len=max_seq_len), engine=RecordingEngine())
    return LLMBrain(lm, GenerationConfig(max_tokens=16), **kwargs)


def after_a_call() -> Conversation:
    return Conversation([{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is 1234 * 5678?"},
                         {"role": "assistant", "content": call("calculator",
                                                               expression="1234 * 5678")},
                         {"role": "tool", "content": "7006652"}],
                        [t.spec() for t in tools()])


def test_prompt_in_the_documented_format(meta):
    brain = brain_on(meta)  # SmolLM2's template has no tool format
    text = brain.lm.tokenizer.decode(brain.prompt(after_a_call()))
    assert "Be brief.\n\nYou can call tools." in text and '{"name":"calculator"' in text
    assert text.endswith("<|im_start|>tool\n7006652<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_in_a_native_format(meta):
    brain = brain_on(meta, QWEN)
    text = brain.lm.tokenizer.decode(brain.prompt(after_a_call()))
    assert "Be brief.\n\n# Tools" in text and '"name": "calculator"' in text
    assert "You can call tools." not in text
    assert text.endswith("<|im_start|>user\n<tool_response>\n7006652\n</tool_response>"
                         "<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_drops_the_oldest_turns_to_fit(meta):
    conversation = after_a_call()
    conversation.messages += [{"role": "assistant", "content": "Done."},
                              {"role": "user", "content": "And halved?"}]
    full = len(brain_on(meta).prompt(conversation))
    brain = brain_on(meta, max_seq_len=full + 16 - 5)  # 5 tokens short
    text = brain.lm.tokenizer.decode(brain.prompt(conversation))
    assert "Be brief." in text and "What is 1234 * 5678?" in text and "And halved?" in text
    assert "7006652" not in text and "<|im_start|>tool" not in text  # the call went first
    assert "Done." in text
    with pytest.raises(LmforgeError, match="too many beside max_tokens 16"):
        brain_on(meta, max_seq_len=40).prompt(conversation)


def test_prompt_keeps_the_current_question(meta):
    """In a long conversation the current question and its latest round stay; older
    exchanges go first, then the current question's oldest rounds."""
    conversation = after_a_call()
    conversation.messages += [{"role": "assistant", "content": "It is 7006652. " * 20},
                              {"role": "user", "content": "And halved?"},
                              {"role": "assistant", "content": call("calculator",
                                                                    expression="7006652 / 2")},
                              {"role": "tool", "content": "3503326"},
                              {"role": "assistant", "content": call("calculator",
                                                                    expression="3503326 + 0")},
                              {"role": "tool", "content": "3503326"}]
    m = conversation.messages
    kept = Conversation(m[:2] + [m[5]] + m[-2:], conversation.tools)
    want = brain_on(meta).prompt(kept)
    brain = brain_on(meta, max_seq_len=len(want) + 16)  # room for exactly `kept`
    assert brain.prompt(conversation) == want
    text = brain.lm.tokenizer.decode(want)
    assert "And halved?" in text and "3503326 + 0" in text and "7006652 / 2" not in text


def test_first_turn_processors_get_their_own_batch(meta):
    first, later = object(), object()
    brain = brain_on(meta, processors=[later], first_turn=[first])
    opening = Conversation(after_a_call().messages[:2], after_a_call().tools)
    texts = brain.complete([after_a_call(), opening, after_a_call()])
    assert brain.lm.engine.batches == [(2, [later]), (1, [first])]
    assert texts == ["ok1", "ok2", "ok1"]
    assert brain_on(meta, processors=[later]).processors_for(opening) == [later]
