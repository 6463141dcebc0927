"""What this machine computes natively, for choices such as `train.dtype = "auto"`, and the
CPU threads the commands may ask for."""

from __future__ import annotations

import argparse
import functools
import platform
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags for bf16 dot products in hardware


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ('' where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith(field)), "")
    return line.partition(":")[2].strip()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    return frozenset(_cpuinfo("flags").split())


def cpu_name() -> str:
    """The CPU's model name, for benchmark records."""
    return _cpuinfo("model name") or platform.machine()


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether bf16 matrix products run in hardware on this device type: a CUDA GPU that
    supports them, or a CPU with AVX512-BF16 or AMX. Elsewhere oneDNN emulates them and bf16
    autocast is several times slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


@functools.cache
def gemm_attention_wins(dtype: torch.dtype) -> bool:
    """Whether causal attention over a long CPU prefill is faster as blocked matrix products
    (`attention.blocked_causal_attention`) than through PyTorch's CPU flash kernel: where the
    products run in hardware at that dtype, AVX-512 for fp32 and AVX512-BF16/AMX for bf16.
    Measured over 512 tokens, 9 heads: AVX-512 EPYC 3.7 against 4.4 ms (fp32) and 1.5
    against 4.2 ms (bf16); AVX2 EPYC 8.4 against 5.3 ms (fp32) and 95 against 5.5 ms (bf16,
    emulated), so there the flash kernel is used."""
    if dtype == torch.bfloat16:
        return native_bf16("cpu")
    return dtype == torch.float32 and "avx512f" in cpu_flags()


def auto_dtype(device_type: str = "cpu") -> str:
    """"bf16" where it is native, else "fp32"."""
    return "bf16" if native_bf16(device_type) else "fp32"


def thread_count(text: str) -> int:
    """The argparse type of every `--threads` flag: a whole number of at least 1 (below that
    `torch.set_num_threads` fails with a RuntimeError, and 0 would be a silent no-op)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of CPU threads"
                                         ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"{n} threads: give 1 or more, or leave --threads out for torch's default "
            f"({torch.get_num_threads()} here)")
    return n
