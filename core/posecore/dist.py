"""torch.distributed under torchrun: set-up from the environment, and the few collectives the loop needs.

    torchrun --nproc_per_node=2 -m posecore train run.toml

Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is initialised and every function here
is a cheap no-op, so the single-process loop pays nothing for it.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from posecore.errors import ConfigError

_host_group: Any = None  # a gloo group for small host-side collectives when the main backend is nccl


def world_size() -> int:
    """Processes in the job (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE > 1) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); returns this rank's device.

    Collectives give up after ``timeout_s``, so a rank that died cannot leave the others hanging for long.
    """
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(backend, timeout=timeout)
    except ValueError as err:  # an incomplete environment (e.g. WORLD_SIZE set by hand without MASTER_ADDR)
        raise ConfigError(f"cannot join the distributed job ({err}); launch with torchrun") from None
    global _host_group
    _host_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return device


def teardown() -> None:
    """Leave the process group (at the end of a run, also after an error)."""
    global _host_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _host_group = None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean(value: float) -> float:
    """The mean of ``value`` over all ranks."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def max_int(value: int) -> int:
    """The largest ``value`` over all ranks, through host memory (no device sync, even under nccl)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_host_group)
    return int(tensor.item())


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object), on every rank."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, device=_collective_device())
    return holder[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def _collective_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
