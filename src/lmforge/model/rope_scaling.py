"""RoPE scaling: running a RoPE model past the context window it was trained on.

RoPE rotates channel pair i by m·θ_i, θ_i = b^(−2i/d) (`model/position.py`). Positions past
the trained window L give angles the model never saw; each method maps them back into
what it knows, for a window of s·L (s = `rope_factor`):

- linear (position interpolation; Chen et al., 2023, "Extending Context Window of Large
  Language Models via Positional Interpolation"): θ_i / s, i.e. position m reads as m / s.
- ntk (NTK-aware; bloc97, 2023; Code Llama's larger base is the same idea): the base
  becomes b·s^(d/(d−2)), which leaves the fastest pair (i = 0) as it was and divides the
  slowest (i = d/2 − 1) by exactly s: high frequencies extrapolate, low ones interpolate.
- yarn (Peng et al., 2023, "YaRN: Efficient Context Window Extension of Large Language
  Models", §3.2–3.4): per pair, a ramp between extrapolation (θ_i, for pairs that turn
  more than β_fast = 32 times over L) and interpolation (θ_i / s, fewer than β_slow = 1
  turn), and the attention temperature √(1/t) = 0.1·ln(s) + 1 multiplying cos and sin,
  so that q·k grows by (0.1·ln s + 1)².

Each formula is transformers' `modeling_rope_utils` (linear, yarn with `truncate`; ntk is
its "dynamic" rule at a sequence of s·L with factor 1), checked against its
`ROPE_INIT_FUNCTIONS` by tests/test_long_context.py. Chosen at load time
(`lmforge.api.load(spec, rope_scaling="yarn:4")`, `--rope-scaling yarn:4`) or saved in a
checkpoint's config (`rope_scaling`, `rope_factor`, `rope_original_max_seq_len`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ROPE_SCALINGS, ModelConfig

YARN_BETA_FAST = 32.0  # pairs turning more often than this over L extrapolate (YaRN §3.2)
YARN_BETA_SLOW = 1.0  # pairs turning less often interpolate


def parse_rope_scaling(spec: str) -> tuple[str, float]:
    """"yarn:4" → ("yarn", 4.0); "none" → ("none", 1.0); "none:4" → ("none", 4.0): plain
    RoPE over a window 4 times the trained one (extrapolation, the baseline to compare)."""
    kind, _, factor = spec.partition(":")
    try:
        value = float(factor or ("1" if kind == "none" else "nan"))
    except ValueError:
        value = math.nan
    if kind not in ROPE_SCALINGS or not value >= 1.0:
        raise LmforgeError(f"RoPE scaling {spec!r} is not METHOD:FACTOR with a method of "
                           f"{', '.join(ROPE_SCALINGS)} and a factor of at least 1 (such as "
                           "yarn:4; none alone restores the trained window)")
    return kind, value


def with_rope_scaling(config: ModelConfig, spec: str) -> ModelConfig:
    """`config` with its window widened s times by the method of `spec` ("yarn:4"; "none"
    restores the trained window). Scaling a scaled config starts again from the trained
    window."""
    # "none:s" widens the window and leaves the frequencies: RoPE extrapolated as it is
    kind, factor = parse_rope_scaling(spec)
    if config.position != "rope":
        raise LmforgeError(f"RoPE scaling needs a RoPE model; this one has position="
                           f"{config.position!r}")
    trained = config.rope_original_max_seq_len or config.max_seq_len
    return dataclasses.replace(
        config, rope_scaling=kind, rope_factor=factor, max_seq_len=int(trained * factor),
        rope_original_max_seq_len=0 if factor == 1 and kind == "none" else trained)


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """θ_i = base^(−2i/d), i < d/2, in fp32 (as transformers computes it)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def yarn_inv_freq(head_dim: int, base: float, factor: float, trained: int
                  ) -> tuple[torch.Tensor, float]:
    """YaRN's θ'_i and attention factor (Peng et al., 2023, eq. 17–22)."""
    def pair_turning(turns: float) -> float:
        # the (fractional) pair index whose wavelength 2π·base^(2i/d) fits `turns` times in
        # the trained window: i = d·ln(L / (2π·turns)) / (2·ln base)
        return head_dim * math.log(trained / (turns * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair_turning(YARN_BETA_FAST)), 0)
    high = min(math.ceil(pair_turning(YARN_BETA_SLOW)), head_dim - 1)
    high = high if high != low else high + 0.001  # an empty ramp would divide by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep θ_i (fast pairs), 0: θ_i / s (slow pairs)
    powers = base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # 1 / θ_i
    inv_freq = 1.0 / (factor * powers) * (1 - extrapolate) + 1.0 / powers * extrapolate
    return inv_freq, 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """(θ_i (d/2,) fp32, attention factor) of the config's RoPE and its scaling."""
    d, base, s = config.head_dim, config.rope_theta, config.rope_factor
    if config.rope_scaling == "linear":
        return default_inv_freq(d, base) / s, 1.0
    if config.rope_scaling == "ntk":
        return default_inv_freq(d, base * s ** (d / (d - 2))), 1.0
    if config.rope_scaling == "yarn":
        return yarn_inv_freq(d, base, s, config.rope_original_max_seq_len)
    return default_inv_freq(d, base), 1.0
