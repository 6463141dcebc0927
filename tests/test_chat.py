"""Multi-turn chat: history, system prompt, reset, and trimming to the context window."""

from __future__ import annotations

import pytest

from lmforge.console import take_dropped
from lmforge.errors import LmforgeError
from lmforge.generate.chat import ChatSession
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Engine
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.char import CharTokenizer

TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .?\nsystemuserassistant",
                              eos="<|im_end|>", extra_special=["<|im_start|>"])


def session(max_seq_len: int) -> ChatSession:
    config = ModelConfig(vocab_size=TOK.vocab_size, d_model=16, n_layer=1, n_head=2, d_ff=32,
                         max_seq_len=max_seq_len)
    model = Transformer(config)
    model.init_weights(seed=0)
    return ChatSession(Engine(model, TOK), system="be brief")


def test_history_grows_and_reset_clears():
    chat = session(512)
    config = GenerationConfig(max_tokens=5, temperature=0)
    first = "".join(d.text for d in chat.send("hello", config))
    list(chat.send("again", config))
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == first
    ids = chat.prompt_ids(5)
    assert TOK.decode(ids).startswith("<|im_start|>system\nbe brief<|im_end|>")
    chat.reset()
    assert chat.messages == []


def test_oldest_turns_are_dropped_to_fit_the_context():
    chat = session(160)
    config = GenerationConfig(max_tokens=8, temperature=0)
    for text in ["first question here", "second question here", "third question here"]:
        list(chat.send(text, config))
    n = chat.dropped
    assert n >= 1 and take_dropped(chat) == n and take_dropped(chat) == 0 == chat.dropped
    contents = [m["content"] for m in chat.messages]
    assert "first question here" not in contents and "third question here" in contents
    assert len(chat.prompt_ids(8)) + 8 <= 160


def test_a_message_longer_than_the_context_is_a_clear_error():
    chat = session(64)
    with pytest.raises(LmforgeError, match="context window of 64"):
        list(chat.send("x" * 100, GenerationConfig(max_tokens=8, temperature=0)))
    assert chat.messages == []  # the session goes on without it
