"""Distributed data parallel: the same `lmforge train` command under
`torchrun --nproc_per_node N` trains on N processes (gloo on CPU, NCCL on GPU).

`train.batch_size` is the global batch. Every rank draws the same global batch from the same
seeded generator and keeps its own slice of rows; DDP averages the gradients, so a step
equals the single-process step on the whole batch up to floating-point summation order.
Rank 0 alone logs, evaluates and writes checkpoints.

`train.fsdp = true` wraps the model in FullyShardedDataParallel instead (Zhao et al. 2023,
ZeRO-3 style: parameters, gradients and optimizer state sharded over the ranks; each block
is one FSDP unit whose parameters are gathered for its forward and backward only, and so is
each decoder block's cross-attention key/value projection, which runs outside it). It runs
on CPU under gloo too. Gathering a full state dict or optimizer state is then a collective,
so every rank takes part in evaluation and checkpointing, and rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lmforge.errors import LmforgeError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

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
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.size

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `values` over the ranks."""
        if self.size > 1:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def setup(device: torch.device) -> World:
    """Join the process group that torchrun describes in the environment, if any: NCCL
    between GPUs, gloo between CPU processes."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


FSDP_PREFIX = "_fsdp_wrapped_module."


def wrap(model: torch.nn.Module, world: World, fsdp: bool = False) -> torch.nn.Module:
    """DDP, or FSDP with one unit per Transformer block; the module itself on one process."""
    if fsdp and world.size == 1:
        raise LmforgeError("train.fsdp = true shards the model over several processes: run "
                           "under `torchrun --nproc_per_node N` (N ≥ 2), or set it to false")
    if world.size == 1:
        return model
    gpu = [world.device.index] if world.device.type == "cuda" else None
    if not fsdp:
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=gpu)
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import CustomPolicy

    from lmforge.model.block import Block
    from lmforge.model.cross_attention import CrossAttention

    # `CrossMemory.build` calls every decoder block's cross-attention K/V projection before
    # the decoder runs, outside its block's forward, where the block's shards are not
    # gathered: each such projection is a unit of its own, gathered when it is called.
    kv = {id(m.kv) for m in model.modules() if isinstance(m, CrossAttention)}
    policy = CustomPolicy(lambda m: isinstance(m, Block) or id(m) in kv)
    return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True,
                                    device_id=world.device)


def is_fsdp(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def param_name(name: str) -> str:
    """A parameter's name in the unwrapped module (FSDP inserts its wrappers' names)."""
    return name.replace(FSDP_PREFIX, "")


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on every rank (a collective under FSDP)."""
    if not is_fsdp(module):
        return getattr(module, "module", module).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


def optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state to save (under FSDP the full, unsharded one: a collective).

    Not `FSDP.optim_state_dict`: under gloo on CPU (torch 2.13) it returns Adam's second
    moment in place of the first; `get_optimizer_state_dict` gathers both correctly."""
    if not is_fsdp(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(module, optimizer,
                                    options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict) -> None:
    """Restore a state from `optimizer_state` (under FSDP: each rank keeps its shard)."""
    if not is_fsdp(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(module, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(module: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over every shard under FSDP); return it."""
    if is_fsdp(module):
        return module.clip_grad_norm_(max_norm).item()
    return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm).item()


def teardown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
