"""Data-parallel fine-tuning under `torchrun`: torch.distributed, DistributedDataParallel and a
DistributedSampler, nothing hand-written.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; `init_from_env` joins the process group they
describe (NCCL on CUDA, gloo on CPU) and does nothing without them, so a plain run behaves as
before. While a group of more than one process is up, `train_model` wraps the model in DDP,
shards each epoch with a DistributedSampler seeded by the run's seed and `set_epoch`, splits the
global batch size over the ranks (so the recipe, steps and schedule are those of one process),
and sums its epoch statistics over the ranks. Writing files is the caller's job, on rank 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Sequence

import torch
from torch import nn

from edgeprune.errors import InputError

#: How long a rank waits at a collective for the others (rank 0 alone learns gates and writes the export).
DEFAULT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class World:
    """This process's place in the group: its rank, the number of ranks, its local rank."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one rank is up (what makes training data-parallel)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """The current group's view of this process (rank 0 of 1 without a group)."""
    if not active():
        return World()
    import torch.distributed as dist

    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_rank_zero() -> bool:
    return world().is_zero


def launched_as_rank_zero() -> bool:
    """Rank 0 by torchrun's RANK variable, which still holds after the group is shut down."""
    return int(os.environ.get("RANK", "0")) == 0


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the group torchrun describes; returns whether this call started it (so the caller
    ends it with `shutdown`). Without torchrun's variables, or with a group already up, nothing."""
    import torch.distributed as dist

    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed; run without torchrun")
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise InputError("torchrun with a CUDA device needs a visible GPU per rank; use --device cpu for gloo")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """Under a group, CUDA means this rank's own GPU (`cuda:LOCAL_RANK`); otherwise `device`."""
    if active() and device.type == "cuda":
        return torch.device("cuda", world().local_rank)
    return device


def per_rank_batch_size(global_batch_size: int) -> int:
    """The global batch split over the ranks; refuses a batch smaller than the number of ranks."""
    size = world().size
    if global_batch_size < size:
        raise InputError(f"batch size {global_batch_size} is smaller than the {size} ranks; "
                         "use a larger batch or fewer processes")
    return global_batch_size // size


def sampler(dataset: Any, seed: int, drop_last: bool):
    """A DistributedSampler over this group, shuffled from `seed` (call `set_epoch` every epoch)."""
    from torch.utils.data.distributed import DistributedSampler

    w = world()
    return DistributedSampler(dataset, num_replicas=w.size, rank=w.rank, shuffle=True, seed=seed,
                              drop_last=drop_last)


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel on its own device (the parameters stay the model's)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sum_over_ranks(values: Sequence[float], device: Optional[torch.device] = None) -> list[float]:
    """Element-wise sums over every rank (float64, so counts stay exact)."""
    if not active():
        return [float(v) for v in values]
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def train_loader(dataset: Any, batch_size: int, seed: int, num_workers: int = 0):
    """This rank's shard of `dataset` in batches of `batch_size / ranks` (the same steps per epoch
    as one process with `batch_size`); the tail batch is dropped as `train_model` does."""
    from torch.utils.data import DataLoader

    drop_last = len(dataset) > batch_size
    return DataLoader(dataset, batch_size=per_rank_batch_size(batch_size),
                      sampler=sampler(dataset, seed, drop_last=drop_last), num_workers=num_workers,
                      drop_last=drop_last)


def average_buffers(model: nn.Module) -> None:
    """Average the floating-point buffers (batch-norm running statistics) over the ranks.

    DDP broadcasts rank 0's buffers before every forward, so after the last step each rank holds
    statistics of its own last batches; averaging them (as timm's `distribute_bn` does) leaves
    every rank with the same model, estimated from all of their data.
    """
    if not active():
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
            buffer.data /= dist.get_world_size()
