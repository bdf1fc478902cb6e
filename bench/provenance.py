"""Where a result came from: git commit, package versions, device, Slurm job. One copy for every writer.

Used by the runner (run rows), ``vqbench perf`` (perf rows) and the sweep driver (job records).
Imports nothing of vqbench's; torch only inside :func:`device_label`.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_provenance() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout vqbench runs from, or (None, None) outside a git checkout."""
    env_commit = os.environ.get("VQBENCH_GIT_COMMIT")
    if env_commit:  # a job started from a code snapshot (slurm/snapshot.py): the driver's checkout
        return env_commit, os.environ.get("VQBENCH_GIT_DIRTY") == "1"
    root = Path(__file__).resolve().parent.parent  # the checkout holding bench/ (editable installs)
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


RUN_PACKAGES = ("vqbench", "torch", "numpy", "timm", "torchmetrics", "pyarrow")


def package_versions(names: tuple[str, ...] = RUN_PACKAGES) -> dict[str, str]:
    """Python's version and the installed versions of ``names`` (missing ones are left out)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def device_label(dev: Any) -> str:
    """``cuda: <name>`` or ``cpu (<n> threads)``: CPU results depend on the intra-op thread count."""
    import torch

    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"
