"""Distributed data parallel: the same `lmforge train` command under
`torchrun --nproc_per_node N` trains on N processes (gloo on CPU, NCCL on GPU).

`train.batch_size` is the global batch. Every rank draws the same global batch from the same
seeded generator and keeps its own slice of rows; DDP averages the gradients, so a step
equals the single-process step on the whole batch up to floating-point summation order.
Rank 0 alone logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmforge.errors import LmforgeError


@dataclass
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch."""
        if batch % self.size:
            raise LmforgeError(f"train.batch_size={batch} must be a multiple of the number of "
                               f"processes ({self.size})")
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, value: float) -> float:
        """The average of `value` over the ranks."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def setup() -> World:
    """Join the process group that torchrun describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    if world.size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def teardown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
