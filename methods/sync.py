"""Keeping a quantizer's state identical on every rank of a data-parallel run (issue 17).

The collectives themselves are :mod:`vqbench.distributed`'s (each the identity without a process group); these
are the few compositions the built-in methods share, kept out of :mod:`vqbench.methods.ops` (which imports
:mod:`vqbench.methods.base`, itself a user of this module):

* :func:`shared_random_stream`: random draws made inside it come from rank 0's generators on every rank, so a
  random choice (restart candidates, k-means++ seeding, Gumbel noise) is one choice for the whole run, the one a
  single process with the whole batch makes;
* :func:`row_offset`: where this rank's rows sit in the global batch (ranks in order), and the global row count;
* :func:`rows_at`: rows of the global batch at given global positions, fetched from the ranks that hold them;
* :func:`logsumexp_over_ranks`, :func:`min_over_ranks`: reductions :mod:`vqbench.distributed` has no op for.

Rules every built-in method follows: collectives run only in training-mode forwards and in ``on_step`` /
``observe_reconstruction`` / ``init_from_feature_bank`` (never in eval mode, so ranks may evaluate different
shards or only rank 0 evaluates), and every rank makes those calls in the same order. Each function here is
the identity (or a plain local computation) without a process group, so single-process results are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from vqbench.distributed import all_gather_rows, all_reduce_sum_, broadcast_, world

__all__ = ["distributed", "logsumexp_over_ranks", "min_over_ranks", "row_offset", "rows_at", "shared_random_stream"]

_stream_depth = 0  # nesting depth of shared_random_stream: only the outermost one swaps generator states


def distributed() -> bool:
    """Whether this process is one of several ranks (a process group of more than one process)."""
    return world().distributed


@contextmanager
def shared_random_stream(device: torch.device | str | None = None) -> Iterator[None]:
    """Inside, torch's CPU generator (and ``device``'s CUDA generator) hold rank 0's state on every rank.

    On entry rank 0's generator states are broadcast; on exit rank 0 keeps its advanced states (exactly as a single
    process with the whole batch would have advanced them) and every other rank gets its own states back, so draws
    outside (dropout, data order) keep their per-rank streams. Every rank must make the same draws inside (the
    same calls with the same shapes). Nested uses share the outermost stream. Without a process group: nothing.
    """
    global _stream_depth
    if _stream_depth > 0 or not distributed():
        _stream_depth += 1
        try:
            yield
        finally:
            _stream_depth -= 1
        return
    device = torch.device(device) if device is not None else torch.device("cpu")
    # collectives run on the data's device (NCCL needs CUDA tensors; gloo takes either)
    own_cpu = torch.get_rng_state()
    own_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    torch.set_rng_state(broadcast_(own_cpu.to(device, copy=True)).cpu())
    if own_cuda is not None:
        torch.cuda.set_rng_state(broadcast_(own_cuda.to(device, copy=True)).cpu(), device)
    _stream_depth += 1
    try:
        yield
    finally:
        _stream_depth -= 1
        if world().rank != 0:
            torch.set_rng_state(own_cpu)
            if own_cuda is not None:
                torch.cuda.set_rng_state(own_cuda, device)


def row_offset(rows: int, device: torch.device | None = None) -> tuple[int, int]:
    """``(offset, total)``: this rank's first row in the global batch (ranks in order) and the global row count.

    Without a process group ``(0, rows)``.
    """
    if not distributed():
        return 0, rows
    counts = all_gather_rows(torch.tensor([rows], dtype=torch.long, device=device)).tolist()
    rank = world().rank
    return int(sum(counts[:rank])), int(sum(counts))


def rows_at(x: Tensor, positions: Tensor, offset: int) -> Tensor:
    """Rows of the global batch at global ``positions`` (identical on every rank), ``(len(positions), ...)``.

    ``x`` holds this rank's rows, global rows ``[offset, offset + len(x))``. Each rank fills the rows it holds and
    zeros elsewhere, then one sum over ranks: every row comes exactly from its one owner (a sum of one value and
    zeros is exact). Without a process group ``x[positions]``.
    """
    if not distributed():
        return x[positions]
    local = positions - offset
    mine = (local >= 0) & (local < x.shape[0])
    out = x.new_zeros((positions.shape[0], *x.shape[1:]))
    out[mine] = x[local[mine]]
    return all_reduce_sum_(out)


def logsumexp_over_ranks(values: Tensor) -> Tensor:
    """``log sum_r exp(values_r)`` elementwise over ranks (ranks in order); ``values`` itself without a group."""
    if not distributed():
        return values
    return torch.logsumexp(all_gather_rows(values.unsqueeze(0)), dim=0)


def min_over_ranks(value: float, device: torch.device | None = None) -> float:
    """The smallest ``value`` over ranks; ``value`` itself without a group."""
    if not distributed():
        return value
    return float(all_gather_rows(torch.tensor([value], dtype=torch.float64, device=device)).min())
