"""Data-parallel runs: the process group, and the few collectives a stateful quantizer needs.

One process per device (gloo on CPU, NCCL on GPU), started by ``torchrun``, by Slurm tasks through submitit, or
by ``torch.multiprocessing`` in the tests. Rank ``r`` of ``R`` sees rows ``[r B/R, (r+1) B/R)`` of every global
batch of ``B`` rows, so that ``R`` ranks at ``B/R`` rows each are one run at ``B`` rows.

Every function here is the identity when no process group is initialised (or its size is 1), so a quantizer
calls them unconditionally. A quantizer declares what it keeps identical across ranks in
:attr:`vqbench.quantizer.Quantizer.distributed_sync`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def active() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """The current :class:`World` (rank 0 of 1 without a process group)."""
    if not active():
        return World()
    import os

    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over ranks, in place; returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def differentiable_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over ranks, with autograd through it (the backward sums the ranks' gradients).

    For a batch statistic inside a loss (e.g. the batch-averaged code probabilities of an entropy term): compute
    the local sum, add it up with this function, divide by the global row count.
    """
    if not active():
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def global_rows(count: int, device: torch.device | None = None) -> int:
    """The total of ``count`` over ranks (e.g. the global number of rows of a batch)."""
    if not active():
        return count
    total = torch.tensor([count], dtype=torch.long, device=device or _device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(total.item())


def all_gather_rows(tensor: Tensor) -> Tensor:
    """The rows of ``tensor`` of every rank, concatenated in rank order (ranks may hold different row counts)."""
    if not active():
        return tensor
    size = dist.get_world_size()
    counts = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    all_counts = [torch.zeros_like(counts) for _ in range(size)]
    dist.all_gather(all_counts, counts)
    rows = [int(c.item()) for c in all_counts]
    padded = tensor.new_zeros((max(rows), *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, rows)])


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Every rank gets rank ``src``'s ``tensor``, in place; returns it."""
    if active():
        dist.broadcast(tensor, src=src)
    return tensor


def shared_seed(device: torch.device | None = None) -> int:
    """A seed drawn from rank 0's global torch generator and broadcast: one random stream for every rank.

    Draws from the global generator on every rank (so all ranks stay in step), then keeps rank 0's draw.
    """
    seed = torch.randint(0, 2**62, (1,), dtype=torch.long)
    if active():
        seed = seed.to(device or _device())
        dist.broadcast(seed, src=0)
    return int(seed.item())


def shard(rows: Tensor) -> Tensor:
    """This rank's contiguous part of a global batch's rows (``rows.shape[0]`` must divide by the world size)."""
    w = world()
    if not w.distributed:
        return rows
    n = rows.shape[0]
    if n % w.size:
        raise ValueError(f"a global batch of {n} rows does not divide over {w.size} ranks")
    per = n // w.size
    return rows[w.rank * per:(w.rank + 1) * per]


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    """The device collectives of this process group run on (NCCL needs CUDA tensors)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
