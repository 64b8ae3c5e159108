"""One run on several processes: torch.distributed set-up, and which sequences each process trains on.

A run's processes are started torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the
environment) by the local pool (torchrun) or by SLURM (srun, through submitit). NCCL on GPUs, gloo on CPU.

The global batch is the run's: each step every process takes a contiguous share of the same batch, so the
data order, the FLOP accounting and the run id do not depend on the number of processes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()  # one process


def world_from_env() -> World:
    """The torchrun-style environment of this process; a single process without one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the run's process group (no-op for one process)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # A process that dies takes its peers down within minutes, not NCCL's default half hour.
    dist.init_process_group(
        backend, rank=world.rank, world_size=world.size, timeout=datetime.timedelta(minutes=10)
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(rows: int, world: World) -> tuple[int, int]:
    """[start, stop) of this process's sequences in a batch of `rows`: contiguous, sizes differ by at most 1."""
    base, extra = divmod(rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (world.rank < extra)


def chunks(start: int, stop: int, size: int | None) -> list[tuple[int, int]]:
    """[start, stop) in micro-batches of at most `size` sequences (None: one chunk)."""
    if size is None or size >= stop - start:
        return [(start, stop)]
    return [(lo, min(lo + size, stop)) for lo in range(start, stop, size)]


def broadcast(value: object, world: World) -> object:
    """Rank 0's value on every rank (a decision only rank 0 can make, e.g. whether it holds the run's lock)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_max(value: float, world: World) -> float:
    if not world.distributed:
        return value
    box = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        box = box.cuda()
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
