"""The runner's checkpoint I/O and random-number state: what makes a resumed run match an uninterrupted one.

A checkpoint (``<results>/checkpoints/<run_id>.pt``) is one dict: ``run_id``, ``state`` (the run's
counters: stage, step, elapsed, train_time, items, offset), ``models`` (one state dict per stage trained
so far), ``optimizer`` and ``scheduler`` (of the stage in progress; ``None`` in a final checkpoint),
``rng`` (every generator the run draws from), ``metric_rows``, ``array_rows``, ``running`` (the logged
values of the unfinished log window) and, once the run has finished, ``complete: True`` (a generation
task reuses the final weights of a finished tokenizer run by its id).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The states of every global generator a run draws from (CUDA's too, where there is one)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (generator states are CPU byte tensors wherever they were mapped)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` loaded on the CPU (``load_state_dict`` moves tensors to their parameters'
    devices), or ``None`` when there is none."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
