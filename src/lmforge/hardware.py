"""What this machine computes natively, for choices such as `train.dtype = "auto"`."""

from __future__ import annotations

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


def auto_dtype(device_type: str = "cpu") -> str:
    """"bf16" where it is native, else "fp32"."""
    return "bf16" if native_bf16(device_type) else "fp32"
