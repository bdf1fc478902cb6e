"""Data-parallel runs: the process group, and the few collectives a stateful quantizer needs.

One process per device (gloo on CPU, NCCL on GPU), started by ``torchrun``, by Slurm tasks through submitit, or
by ``torch.multiprocessing`` in the tests. Rank ``r`` of ``R`` sees rows ``[r B/R, (r+1) B/R)`` of every global
batch of ``B`` rows, so that ``R`` ranks at ``B/R`` rows each are one run at ``B`` rows.

Every function here is the identity when no process group is initialised (or its size is 1), so a quantizer
calls them unconditionally. A quantizer declares what it keeps identical across ranks in
:attr:`vqbench.quantizer.Quantizer.distributed_sync`.

The runner's side (:func:`join`, :func:`average_step_`, :func:`check_divides`, :func:`refuse_undeclared_state`,
:func:`local_range`, :func:`sum_floats`, the object collectives): every rank runs the same code on the same seed;
gradients and logged values are averaged over ranks once per step; evaluations cover disjoint parts of a split
and are combined exactly (counts and sums added, rows gathered in rank order); rank 0 alone writes files.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from vqbench.errors import UserError


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
    """Wait until every rank reaches this point."""
    if active():
        dist.barrier()


def _device() -> torch.device:
    """The device collectives of this process group run on (NCCL needs CUDA tensors)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- the runner's side -------------------------------------------------------------------------------
def launched_size() -> int:
    """The world size a launcher asked for: an initialised group's, else ``$WORLD_SIZE`` (torchrun, submitit)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"$WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def join(device: torch.device) -> torch.device:
    """Join the run's process group and return this rank's device; ``device`` unchanged in a single process.

    A group the caller initialised is used as it is. Otherwise, when ``$WORLD_SIZE`` > 1 (``torchrun``, Slurm
    tasks through submitit), the group is initialised from the environment (``env://``): NCCL when ``device``
    is CUDA, else gloo; it is destroyed when the process exits. A CUDA device becomes
    ``cuda:($LOCAL_RANK mod the visible GPUs)``.
    Ranks other than 0 of a group initialised here print nothing to stdout (each would repeat rank 0's lines;
    errors still go to stderr).
    """
    if launched_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:  # a cluster may show each task only its own GPU(s)
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if not dist.is_available():
            raise UserError("$WORLD_SIZE > 1 but this torch build has no torch.distributed: run one process")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_destroy)
        if dist.get_rank() != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return device


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_divides(batch_size: int, what: str = "budget.batch_size") -> None:
    """A :class:`UserError` when the world size does not divide a global batch of ``batch_size`` rows."""
    size = world().size
    if batch_size % size:
        raise UserError(f"{what} = {batch_size} does not divide over {size} processes: use a batch size that "
                        f"is a multiple of {size}, or another number of processes")


def refuse_undeclared_state(quantizer: torch.nn.Module, method: str) -> None:
    """A :class:`UserError` for a run of more than one process with a quantizer that keeps state (persistent
    buffers) but whose class declares no :attr:`~vqbench.quantizer.Quantizer.distributed_sync`."""
    from vqbench.quantizer import uses_undeclared_state

    if not world().distributed:
        return
    buffers = uses_undeclared_state(quantizer)
    if buffers:
        shown = ", ".join(buffers[:6]) + (f" and {len(buffers) - 6} more" if len(buffers) > 6 else "")
        raise UserError(f"method {method} keeps state (buffers {shown}) but declares no distributed_sync: declare "
                        "what it keeps identical across ranks (Quantizer.distributed_sync, () if nothing needs "
                        "syncing) or run it in one process")


def average_step_(params: Sequence[torch.nn.Parameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """Average the gradients of ``params`` (in place) and the scalar ``values`` over ranks: one all-reduce.

    Returns the averaged values (0-d float32 tensors), or ``values`` itself without a process group. A parameter
    without a gradient on every rank keeps none; one with a gradient on some ranks counts a zero on the others
    (the global batch used it). Every rank then clips and steps with identical gradients.
    """
    if not active():
        return dict(values)
    size, dev = dist.get_world_size(), _device()
    names = list(values)
    grads = [p.grad for p in params]
    pieces = [g.detach().reshape(-1).to(dev, torch.float32) if g is not None
              else torch.zeros(p.numel(), dtype=torch.float32, device=dev) for p, g in zip(params, grads)]
    has_grad = torch.tensor([g is not None for g in grads], dtype=torch.float32, device=dev)
    scalars = torch.stack([torch.as_tensor(values[n]).detach().to(dev, torch.float32).reshape(()) for n in names]) \
        if names else torch.zeros(0, device=dev)
    flat = torch.cat([*pieces, scalars, has_grad])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    n_grad = sum(p.numel() for p in params)
    flat[:n_grad + len(names)].div_(size)
    used = flat[n_grad + len(names):]
    offset = 0
    for i, p in enumerate(params):
        part = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is not None:
            p.grad.copy_(part)
        elif bool(used[i] > 0):  # (a host sync, only for a parameter this rank did not use)
            p.grad = part.to(p.dtype).clone()
    return {n: v for n, v in zip(names, flat[n_grad:n_grad + len(names)].unbind())}


def local_range(n: int) -> tuple[int, int]:
    """This rank's contiguous part ``[start, stop)`` of ``n`` rows (an evaluation split: ``n`` need not divide;
    rank ``r`` of ``R`` has ``[r n // R, (r + 1) n // R)``, so the parts in rank order are the whole split)."""
    w = world()
    return w.rank * n // w.size, (w.rank + 1) * n // w.size


def sum_floats(*values: float) -> tuple[float, ...]:
    """The sums over ranks of Python floats (float64); ``values`` unchanged without a process group."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return tuple(total.tolist())


def gather_rows(rows: Tensor, width: int) -> Tensor:
    """:func:`all_gather_rows` of ``rows`` (possibly no rows: ``(0, width)``); the rows of every rank in rank
    order, on ``rows``' device. Gathers on the collective device (NCCL needs CUDA tensors)."""
    if not active():
        return rows
    rows = rows.reshape(-1, width)
    return all_gather_rows(rows.to(_device())).to(rows.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` without a process group."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
