"""Server metrics in the Prometheus text exposition format (version 0.0.4).

Counters and the time-to-first-token histogram are updated from the event loop and the
scheduler threads under one lock; gauges (queue length, batch size, slots by state, tokens/s)
are read from the schedulers when /metrics is scraped. Tokens/s is the number of tokens
generated over the last `WINDOW_S` seconds divided by that window.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

WINDOW_S = 10.0
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HELP = {
    "lmforge_requests_total": ("counter", "HTTP requests by endpoint and status code"),
    "lmforge_prompt_tokens_total": ("counter", "prompt tokens of admitted sequences"),
    "lmforge_generation_tokens_total": ("counter", "tokens generated"),
    "lmforge_prefix_reused_tokens_total": (
        "counter", "prompt tokens whose keys/values came from a cached slot (not prefilled)"),
    "lmforge_prefilled_tokens_total": ("counter", "prompt tokens run through the model"),
    "lmforge_sequences_finished_total": ("counter", "sequences ended, by finish reason"),
    "lmforge_time_to_first_token_seconds": (
        "histogram", "from a sequence's arrival to its first token"),
    "lmforge_queue_length": ("gauge", "sequences waiting for a slot"),
    "lmforge_batch_size": ("gauge", "sequences in the running decode batch"),
    "lmforge_slots": ("gauge", "KV-cache slots by state (active, cached, free)"),
    "lmforge_tokens_per_second": ("gauge", f"tokens generated per second over {WINDOW_S:g} s"),
}

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {name: {} for name in HELP}
        self._ttft: dict[Labels, list[float]] = {}  # bucket counts, then sum, then count
        self._recent: dict[str, deque[tuple[float, int]]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def observe_ttft(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self._ttft.setdefault(key, [0.0] * (len(TTFT_BUCKETS) + 3))
            h[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            h[-2] += seconds
            h[-1] += 1

    def generated(self, model: str, n: int) -> None:
        """Count `n` new tokens for the counter and the tokens/s window."""
        self.inc("lmforge_generation_tokens_total", n, model=model)
        now = time.monotonic()
        with self._lock:
            window = self._recent.setdefault(model, deque())
            window.append((now, n))
            while window and window[0][0] < now - WINDOW_S:
                window.popleft()

    def tokens_per_second(self, model: str) -> float:
        now = time.monotonic()
        with self._lock:
            window = self._recent.get(model, ())
            return sum(n for t, n in window if t >= now - WINDOW_S) / WINDOW_S

    def render(self) -> str:
        """The text exposition of every metric."""
        lines = []
        with self._lock:
            for name, (kind, text) in HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    lines += self._histogram_lines(name)
                for key, value in sorted(self._values[name].items()):
                    lines.append(f"{name}{_labels(key)} {value:g}")
        return "\n".join(lines) + "\n"

    def _histogram_lines(self, name: str) -> list[str]:
        lines = []
        for key, h in sorted(self._ttft.items()):
            cumulative = 0.0
            for bound, n in zip((*TTFT_BUCKETS, float("inf")), h[:-2], strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{name}_bucket{_labels((*key, ('le', le)))} {cumulative:g}")
            lines.append(f"{name}_sum{_labels(key)} {h[-2]:g}")
            lines.append(f"{name}_count{_labels(key)} {h[-1]:g}")
        return lines
