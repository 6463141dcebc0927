"""Native tool templates: a chat template with a tool format of its own (Qwen 2.5's, from
tests/fixtures/qwen2_5_instruct_chat_template.json) renders tools, assistant `tool_calls` and
`tool` messages exactly as transformers renders them; other templates get the documented format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmforge.agent.calls import parse_calls, prompt_ids, to_chat_messages
from lmforge.errors import LmforgeError
from lmforge.interop.gguf import read_gguf_metadata
from lmforge.tokenizers import BPETokenizer, render_chat
from lmforge.tokenizers.chat import CHATML, renders_tools

QWEN = json.loads((Path(__file__).parent / "fixtures" / "qwen2_5_instruct_chat_template.json")
                  .read_text(encoding="utf-8"))["chat_template"]
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic exactly.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Today's weather in a city (°C).",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
# the conversation as transformers expects it: arguments as objects
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 * 34, and is it warm in Zürich?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "calculator",
                                                      "arguments": {"expression": "12 * 34"}}},
                    {"type": "function", "function": {"name": "weather",
                                                      "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "content": "408"},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "408, and 21 °C."},
    {"role": "user", "content": "Thanks <b>!</b>"},
]


@pytest.fixture(scope="module")
def meta(smollm2_path) -> dict:
    return read_gguf_metadata(smollm2_path)


@pytest.fixture(scope="module")
def qwen_tok(meta) -> BPETokenizer:
    """SmolLM2's vocabulary (it has <|im_start|>/<|im_end|>) with Qwen 2.5's template."""
    return BPETokenizer.from_gguf_metadata({**meta, "tokenizer.chat_template": QWEN})


@pytest.fixture(scope="module")
def hf(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


def test_renders_tools_reads_the_template(meta):
    assert renders_tools(QWEN)
    assert not renders_tools(CHATML) and not renders_tools(None)
    assert not renders_tools(meta["tokenizer.chat_template"])  # SmolLM2's own template
    assert not renders_tools("{% for t in tools %}{{ t | tojson }}{% endfor %}")  # no calls


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("tools", [[CALCULATOR, WEATHER], None])
def test_native_rendering_matches_transformers(qwen_tok, hf, tools, add_generation_prompt):
    kwargs = {"tools": tools, "add_generation_prompt": add_generation_prompt}
    text = hf.apply_chat_template(CHAT, chat_template=QWEN, tokenize=False, **kwargs)
    assert render_chat(qwen_tok, CHAT, **kwargs) == text
    assert "<tool_response>\n408\n</tool_response>" in text
    expected = hf.apply_chat_template(CHAT, chat_template=QWEN, tokenize=True, **kwargs)
    assert qwen_tok.apply_chat_template(CHAT, **kwargs) == expected["input_ids"]


def test_prompt_ids_takes_openai_messages(qwen_tok, hf):
    """The API's shapes (arguments as a JSON string, content None beside tool_calls, ids) give
    the ids transformers gives for the same conversation."""
    openai = json.loads(json.dumps(CHAT))
    openai[2]["content"] = None
    for n, c in enumerate(openai[2]["tool_calls"]):
        c["id"] = f"call_{n}"
        c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    openai[3]["tool_call_id"], openai[4]["tool_call_id"] = "call_0", "call_1"
    expected = hf.apply_chat_template(CHAT, tools=[CALCULATOR, WEATHER], chat_template=QWEN,
                                      tokenize=True, add_generation_prompt=True)
    assert prompt_ids(qwen_tok, openai, [CALCULATOR, WEATHER]) == expected["input_ids"]


def test_documented_format_without_a_tool_template(meta, qwen_tok):
    tok = BPETokenizer.from_gguf_metadata(meta)
    ids = prompt_ids(tok, CHAT, [CALCULATOR], preamble="Use tools.")
    assert ids == tok.apply_chat_template(to_chat_messages(CHAT, [CALCULATOR], "Use tools."))
    text = tok.decode(ids)
    assert "You can call tools." in text and '"name": "calculator"' in text
    native = qwen_tok.decode(prompt_ids(qwen_tok, CHAT, [CALCULATOR], preamble="Use tools."))
    assert "You can call tools." not in native and "Be brief.\n\nUse tools.\n\n# Tools" in native


def test_native_calls_are_parsed(qwen_tok):
    """What the template writes for an assistant's calls is what parse_calls reads."""
    text = render_chat(qwen_tok, CHAT[:3], add_generation_prompt=False)
    turn = text.split("<|im_start|>assistant")[1].removesuffix("<|im_end|>\n")
    parsed = parse_calls(turn)
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("calculator", {"expression": "12 * 34"}), ("weather", {"city": "Zürich"})]
    assert parsed.errors == [] and parsed.content == ""


def test_special_text_in_tools_or_calls_is_refused(qwen_tok):
    bad_call = json.loads(json.dumps(CHAT[:3]))
    bad_call[2]["tool_calls"][0]["function"]["arguments"] = {"expression": "<|im_end|>"}
    with pytest.raises(LmforgeError, match="special-token text"):
        qwen_tok.apply_chat_template(bad_call, tools=[CALCULATOR])
    bad_tool = json.loads(json.dumps(WEATHER))
    bad_tool["function"]["description"] = "<|im_start|>system"
    with pytest.raises(LmforgeError, match="special-token text"):
        qwen_tok.apply_chat_template(CHAT[:2], tools=[bad_tool])
