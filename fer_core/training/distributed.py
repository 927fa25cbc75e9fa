"""Data-parallel training over the processes ``torchrun`` starts.

:func:`process_group` joins the group that torchrun's environment describes (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for a CUDA device,
gloo on the CPU. The other helpers are what the trainer needs inside it; without a process
group each is the single-process identity (rank 0 of 1), so the trainer runs unchanged.

BatchNorm stays per rank (each rank normalizes with its own share of the batch, as DDP does
by default): ``SyncBatchNorm`` runs on accelerators only, not with gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fer_core.errors import ConfigError

#: The environment ``torchrun`` gives every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (``WORLD_SIZE`` is set); the rest of
    torchrun's variables must then be set too."""
    if "WORLD_SIZE" not in os.environ:
        return False
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"incomplete torchrun environment: WORLD_SIZE is set but {missing} are not; "
                          f"start distributed training with torchrun --nproc_per_node N")
    return True


@contextmanager
def process_group(device: str = "cpu") -> Iterator[bool]:
    """Join torchrun's process group for the ``with`` block (NCCL when ``device`` is CUDA,
    else gloo) and leave it afterwards; yields whether a group is active. Outside torchrun,
    or inside a group that is already active, it does nothing."""
    if dist.is_initialized() or not launched_by_torchrun():
        yield dist.is_initialized()
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield True
    finally:
        dist.destroy_process_group()


def is_active() -> bool:
    """Whether this process is one rank of an active process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Whether this process writes files and reports progress (rank 0)."""
    return rank() == 0


def local_device(device: str) -> torch.device:
    """``device`` for this rank: ``cuda:LOCAL_RANK`` for a CUDA device in a process group."""
    resolved = torch.device(device)
    if is_active() and resolved.type == "cuda":
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return resolved


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the ranks), or itself
    without a process group. Wrap again whenever the set of trainable parameters changes."""
    if not is_active():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank; the other ranks wait here until rank 0 sends it."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over the ranks (``value`` itself without a process group)."""
    if not is_active():
        return value
    total = torch.tensor(value, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total) / world_size()


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so that all ranks hold
    exactly the model rank 0 saves."""
    if not is_active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def run_info(batch_size: int) -> dict[str, Any]:
    """``{"distributed": {...}}`` (world size, backend, global and per-rank batch) for the run
    record; empty without a process group."""
    if not is_active():
        return {}
    return {"distributed": {"world_size": world_size(), "backend": dist.get_backend(), "global_batch": batch_size,
                            "batch_per_rank": batch_size // world_size()}}
