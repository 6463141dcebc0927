"""`GenerationConfig`: the one list of generation fields for the CLI, the API and the web UI.

Names follow the OpenAI API where one exists (`max_tokens`, `temperature`, `top_p`, `stop`,
`seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `n`) and the usual
extensions otherwise (`top_k`, `min_p`, `repetition_penalty`, `no_repeat_ngram_size`,
`num_beams`, `length_penalty`, `min_tokens`; `context_shift` and `n_keep` as llama.cpp's).
CLI flags are the same names with dashes. Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmforge import strict
from lmforge.errors import LmforgeError, excerpt

COMPILE_HELP = ("compile decode steps with torch.compile (Inductor, `lmforge.generate.compiled`): "
                "faster tokens after a one-time compilation (about a minute on two cores, "
                "seconds once Inductor has cached it)")

MAX_STOPS = 16
# A stop string is held back from the stream until it is decided, so its length bounds the
# text withheld (and the work of matching it at every token).
MAX_STOP_CHARS = 1000

# Settings of the local front ends (CLI, Python API) that the server does not take: a
# context shift rewrites a KV slot whose tokens the server keeps for prefix reuse.
LOCAL_ONLY = frozenset({"context_shift", "n_keep"})

HELP = {
    "max_tokens": "most new tokens to generate",
    "min_tokens": "fewest new tokens before a stop token may end the answer",
    "temperature": "softmax temperature; 0 is greedy (argmax)",
    "top_p": "nucleus sampling: keep the smallest set of tokens whose probability reaches p",
    "top_k": "keep the k most likely tokens (0: all)",
    "min_p": "drop tokens whose probability is below min_p times the top token's",
    "presence_penalty": "subtract this from the logit of every token already generated",
    "frequency_penalty": "subtract this times the count of each token already generated",
    "repetition_penalty": "divide positive (multiply negative) logits of seen tokens (CTRL)",
    "no_repeat_ngram_size": "never repeat an n-gram of this size (0: off)",
    "logit_bias": "token id → bias added to its logit, in −100…100",
    "stop": f"strings that end the answer (not included in it): at most {MAX_STOPS}, each of "
            f"1 to {MAX_STOP_CHARS:,} characters",
    "seed": "seed for reproducible sampling",
    "n": "number of answers per prompt",
    "num_beams": "beam search with this many beams (1: off)",
    "length_penalty": "beam score = log-probability / length^length_penalty",
    "context_shift": "go on past a full context window: keep the first n_keep tokens, drop "
                     "the oldest half of the rest and re-read what is kept (llama.cpp's "
                     "context shift; decoders only)",
    "n_keep": "tokens at the start of the prompt a context shift keeps (a system prompt)",
}


@dataclass
class GenerationConfig:
    max_tokens: int = 256
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    num_beams: int = 1
    length_penalty: float = 1.0
    context_shift: bool = False
    n_keep: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        self.validate()

    def validate(self) -> None:
        """Raise LmforgeError naming the first field out of range."""
        checks = [
            ("max_tokens", self.max_tokens >= 1, "at least 1"),
            ("min_tokens", 0 <= self.min_tokens <= self.max_tokens, "between 0 and max_tokens"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "between 0 and 100"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "between -2 and 2"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "between -2 and 2"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "positive"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, "0 (off) or more"),
            ("n", 1 <= self.n <= 128, "between 1 and 128"),
            ("num_beams", 1 <= self.num_beams <= 64, "between 1 and 64"),
            ("n_keep", self.n_keep >= 0, "0 or more"),
            ("stop", len(self.stop) <= MAX_STOPS
             and all(0 < len(s) <= MAX_STOP_CHARS for s in self.stop),
             f"at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS:,} characters"),
            ("logit_bias", all(-100 <= b <= 100 for b in self.logit_bias.values()),
             "biases in -100…100"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise LmforgeError(f"{name}={excerpt(getattr(self, name))} is invalid: it must "
                                   f"be {want}")
        if self.context_shift and self.num_beams > 1:
            raise LmforgeError("context_shift goes with sampling or greedy decoding, not beam "
                               "search: set num_beams=1 or leave context_shift off")
        if self.num_beams > 1 and self.n > self.num_beams:
            raise LmforgeError(f"n={self.n} answers need at least as many beams "
                               f"(num_beams={self.num_beams})")

    def check_vocab(self, vocab_size: int) -> None:
        """Raise LmforgeError when a logit_bias id is outside the model's vocabulary (such a
        bias would otherwise be silently ignored)."""
        bad = sorted(t for t in self.logit_bias if not 0 <= t < vocab_size)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise LmforgeError(f"logit_bias names token id {bad[0]}{more}, outside this "
                               f"model's vocabulary of {vocab_size} tokens (ids 0 to "
                               f"{vocab_size - 1}); remove it or use an id in that range")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GenerationConfig:
        """Build from a mapping; an unknown key is an error that names it."""
        return strict.from_dict(cls, data, "generation setting")
