"""Where a run computes and in which precision: `train.device` and `train.dtype`.

- fp32: no autocast.
- bf16: autocast to bfloat16 on CPU or GPU. Its exponent range is fp32's, so gradients need
  no scaling; the master weights and optimizer state stay fp32.
- fp16: autocast to float16 with dynamic loss scaling (Micikevicius et al., 2018, "Mixed
  Precision Training", §3.2): the loss is multiplied by S before backward so that small
  gradients do not underflow fp16's range; gradients are divided by S again before clipping;
  a step whose gradients hold inf or NaN is skipped and S halved, and S doubles after 2,000
  good steps (`torch.amp.GradScaler`; its sharded variant under FSDP). Meant for GPUs; on a
  CPU it runs, slowly, which is how the tests check the bookkeeping.
- auto: bf16 where the device computes it natively (`hardware.py`), else fp32.

`train.device = "auto"` picks a CUDA GPU when one is visible (under torchrun, the one of the
process's LOCAL_RANK), else the CPU.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch

from lmforge.errors import LmforgeError
from lmforge.hardware import auto_dtype

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(choice: str) -> torch.device:
    """The device of `train.device` for this process."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LmforgeError('train.device = "cuda" but no CUDA GPU is visible; use "cpu" or '
                           '"auto"')
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


class Precision:
    """Autocast and loss scaling for one run."""

    def __init__(self, dtype: str, device: torch.device, sharded: bool = False) -> None:
        self.dtype = auto_dtype(device.type) if dtype == "auto" else dtype
        self.device = device
        scaled = self.dtype == "fp16"
        if sharded:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler = ShardedGradScaler(device.type, enabled=scaled)
        else:
            self.scaler = torch.amp.GradScaler(device.type, enabled=scaled)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, DTYPES.get(self.dtype, torch.bfloat16),
                              enabled=self.dtype in DTYPES)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by S (before they are measured or clipped)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update unless the scaled gradients overflowed; adjust S. Whether the
        step was taken."""
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(optimizer)
        self.scaler.update()
        return scale is None or self.scaler.get_scale() >= scale

    def metrics(self) -> dict[str, float]:
        """The loss scale S, for metrics.jsonl (fp16 only)."""
        return {"loss_scale": self.scaler.get_scale()} if self.scaler.is_enabled() else {}

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
