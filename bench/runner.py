"""The one generic training loop: RunSpec -> trained + evaluated -> rows in the result store.

Methods and tasks are found by name through the registry, never imported. The loop is seeded and
deterministic on CPU (same spec twice -> identical metrics), evaluates periodically over the whole
eval split, stops a run whose loss or gradients stop being finite with status ``diverged`` (keeping
what was measured), checkpoints atomically and resumes to the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from vqbench.errors import UserError
from vqbench.provenance import device_label, git_provenance, package_versions, slurm_job_id
from vqbench.registry import METHODS, TASKS
from vqbench.spec import Budget, RunSpec, canonical_json
from vqbench.store import ResultStore

#: a loss above this (or non-finite) ends the run as ``diverged``
DIVERGENCE_LOSS = 1e8


class Diverged(Exception):
    pass


def check_window(running: dict[str, list[torch.Tensor]], done: int, stage: str) -> dict[str, float]:
    """Means of the logged values of the steps since the last log; :class:`Diverged` names the first bad step.

    A step is bad when its loss is non-finite or above :data:`DIVERGENCE_LOSS`, or its gradient norm is
    non-finite. Checking once per window keeps the loop free of per-step host synchronisation.
    """
    losses = _stack(running["loss"]).double().cpu()
    first = done - len(losses)
    bad = ~torch.isfinite(losses) | (losses.abs() > DIVERGENCE_LOSS)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise Diverged(f"loss became {float(losses[i]):.4g} at step {first + i} of stage {stage}")
    if "grad_norm" in running:
        norms = _stack(running["grad_norm"]).double().cpu()
        bad = ~torch.isfinite(norms)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise Diverged(f"gradient norm became {float(norms[i]):.4g} at step {first + i} of stage {stage}")
    return {name: float(_stack(values).double().mean()) for name, values in running.items()}


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    """Stack logged scalars; a window may mix devices (CPU stats, GPU losses, values restored from a checkpoint)."""
    if any(v.device != values[0].device for v in values):
        values = [v.cpu() for v in values]
    return torch.stack(values)


@dataclass
class RunResult:
    """What :func:`run` returns (the run row is in the store as well)."""

    run_id: str
    status: str  # ok | failed | diverged | timeout | skipped (already complete)
    error: str = ""
    final: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0


def select_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    # generator states are CPU byte tensors whatever device the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr_lambda(budget: Budget, steps: int):
    """Linear warmup over ``warmup_steps``, then cosine decay to 10% of the peak lr."""
    warmup = min(budget.warmup_steps, max(steps - 1, 0))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# -- the loop --------------------------------------------------------------------------------------
def run(spec: RunSpec, results: str | os.PathLike[str] = "results", *, force: bool = False,
        device: str | None = None, progress: bool | None = None, resume: bool = True,
        stop_after_steps: int | None = None) -> RunResult:
    """Train and evaluate ``spec``; write its rows to the store under ``results``.

    A run whose id is already complete is not run again (unless ``force``). With ``resume`` a run
    continues from its last checkpoint. ``stop_after_steps`` stops (without a run row, like a killed
    job) after that many optimizer steps in this call: used to test resume.
    """
    store = ResultStore(results)
    store.ensure_writable()
    run_id = spec.run_id
    if not force and store.is_complete(run_id):
        return RunResult(run_id, "skipped")
    task_entry, method_entry = TASKS.get(spec.task), METHODS.get(spec.method)
    if (task_entry.version, method_entry.version) != (spec.task_version, spec.method_version):
        raise UserError(f"spec {run_id} was made for {spec.task} v{spec.task_version} / {spec.method} "
                        f"v{spec.method_version} but the registry has v{task_entry.version} / "
                        f"v{method_entry.version}: rebuild the spec")
    dev = select_device(device)
    ckpt_path = store.checkpoint_path(run_id)
    if force or not resume:
        ckpt_path.unlink(missing_ok=True)
    started_at = datetime.now(timezone.utc)
    record: dict[str, Any] = {
        "run_id": run_id, "task": spec.task, "task_version": spec.task_version,
        "task_params": canonical_json(spec.task_params), "method": spec.method,
        "method_version": spec.method_version, "method_params": canonical_json(spec.method_params),
        "method_family": method_entry.family, "method_source": method_entry.source,
        "method_paper": method_entry.paper, "method_description": method_entry.description,
        "method_defaults": canonical_json(method_entry.defaults), "task_source": task_entry.source,
        "task_kind": task_entry.kind, "task_description": task_entry.description,
        "seed": spec.seed, "budget": canonical_json(asdict(spec.budget)),
        "tags": list(spec.tags), "spec": spec.to_json(), "main_metric": task_entry.main_metric,
        "higher_is_better": task_entry.higher_is_better, "device": device_label(dev),
        "hostname": socket.gethostname(), "versions": json.dumps(package_versions(), sort_keys=True),
        "slurm_job_id": slurm_job_id(), "started_at": started_at, "error": "",
    }
    record["git_commit"], record["git_dirty"] = git_provenance()

    seed_everything(spec.seed)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    metric_rows: list[tuple[str, int, str, float]] = []
    array_rows: list[tuple[str, int, str, list[float]]] = []
    state = {"stage": 0, "step": 0, "elapsed": 0.0, "train_time": 0.0, "items": 0, "offset": 0}
    status, error = "ok", ""
    try:
        try:
            task = TASKS.create(spec.task, **spec.task_params)
            method_kwargs = {"dim": task.latent_dim, "codebook_size": task.codebook_size, **spec.method_params}
            quantizer = METHODS.create(spec.method, **method_kwargs)
            task.run_spec, task.results_root = spec, store.root  # e.g. to reuse a finished tokenizer run
            task.setup(dev, spec.seed)
            bank = task.feature_bank()
            if bank is not None and hasattr(quantizer, "init_from_feature_bank"):
                quantizer.to(dev)  # the k-means over the bank runs on the run's device
                quantizer.init_from_feature_bank(bank.to(dev))
            stages = task.stages(quantizer, spec.budget)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot build run {run_id} ({spec.task} x {spec.method}): "
                            f"{type(exc).__name__}: {exc}") from exc
        # loaded on the CPU: load_state_dict moves model and optimizer state to their parameters' devices
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False) \
            if resume and ckpt_path.exists() else None
        if checkpoint is not None:
            state.update(checkpoint["state"])
            metric_rows, array_rows = checkpoint["metric_rows"], checkpoint["array_rows"]
        show = sys.stderr.isatty() if progress is None else progress
        steps_this_call = 0
        for stage_index, stage in enumerate(stages):
            if stage_index < state["stage"]:
                stage.model.load_state_dict(checkpoint["models"][stage_index])
                continue
            steps = stage.steps or spec.budget.steps
            params = [p for p in stage.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=stage.lr or spec.budget.lr,
                                          weight_decay=spec.budget.weight_decay) if params else None
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(spec.budget, steps)) \
                if optimizer else None
            start = 0
            running: dict[str, list[float]] = {}
            if checkpoint is not None and checkpoint["state"]["stage"] == stage_index:
                for i, sd in enumerate(checkpoint["models"][:stage_index]):
                    stages[i].model.load_state_dict(sd)
                stage.model.load_state_dict(checkpoint["models"][stage_index])
                if optimizer is not None:
                    optimizer.load_state_dict(checkpoint["optimizer"])
                    scheduler.load_state_dict(checkpoint["scheduler"])
                _set_rng_state(checkpoint["rng"])
                start = checkpoint["state"]["step"]
                running = checkpoint.get("running", {})
                checkpoint = None
            offset = state["offset"]
            eval_interval = spec.budget.eval_interval
            ckpt_interval = spec.budget.checkpoint_interval or eval_interval
            log_interval = max(1, min(eval_interval, 50))

            def evaluate(step: int) -> None:
                stage.model.eval()
                ev = stage.evaluate()
                stage.model.train()
                for name, value in sorted(ev.metrics.items()):
                    metric_rows.append(("eval", offset + step, name, float(value)))
                for name, values in sorted(ev.arrays.items()):
                    array_rows.append(("eval", offset + step, name, [float(v) for v in values]))

            def save(step: int) -> None:
                models = [s.model.state_dict() for s in stages[:stage_index + 1]]
                _atomic_torch_save({
                    "run_id": run_id, "state": {**state, "stage": stage_index, "step": step},
                    "models": models, "optimizer": optimizer.state_dict() if optimizer else None,
                    "scheduler": scheduler.state_dict() if scheduler else None, "rng": _rng_state(),
                    "metric_rows": metric_rows, "array_rows": array_rows, "running": running}, ckpt_path)

            stage.model.train()
            if start == 0:
                evaluate(0)
            bar = tqdm(total=steps, initial=start, disable=not show, desc=f"{spec.method} on {spec.task}"
                       f" [{stage.name}]", leave=False, dynamic_ncols=True)
            t_mark = time.perf_counter()
            for step in range(start, steps):
                if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                    state["elapsed"] += time.perf_counter() - t_mark
                    save(step)
                    bar.close()
                    return RunResult(run_id, "interrupted")
                t0 = time.perf_counter()
                if stage.quantizer is not None and hasattr(stage.quantizer, "on_step"):
                    stage.quantizer.on_step(step, steps)
                batch = stage.batch(step)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    loss, logs = stage.loss(batch)
                if optimizer is not None and loss.requires_grad:  # (a warm-up step may train nothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        params, spec.budget.grad_clip if spec.budget.grad_clip > 0 else float("inf"))
                    optimizer.step()
                    scheduler.step()
                    logs = {**logs, "grad_norm": grad_norm}
                # no host sync per step: values stay tensors until the window is checked and logged
                running.setdefault("loss", []).append(loss.detach().float())
                for name, value in logs.items():
                    running.setdefault(name, []).append(torch.as_tensor(value).detach().float().reshape(()))
                done = step + 1
                boundary_eval = done % eval_interval == 0 or done == steps
                boundary_ckpt = done % ckpt_interval == 0 and done < steps
                window_end = done % log_interval == 0 or boundary_eval or boundary_ckpt
                if window_end and dev.type == "cuda":
                    torch.cuda.synchronize(dev)  # the window's queued GPU work counts as training time
                state["train_time"] += time.perf_counter() - t0
                state["items"] += stage.items_per_batch
                steps_this_call += 1
                if window_end:
                    means = check_window(running, done, stage.name)  # raises Diverged
                    if done % log_interval == 0 or done == steps:
                        for name, value in sorted(means.items()):
                            metric_rows.append(("train", offset + done, name, value))
                        running.clear()
                        bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                if done % eval_interval == 0 or done == steps:
                    evaluate(done)
                if done % ckpt_interval == 0 and done < steps:
                    state["elapsed"] += time.perf_counter() - t_mark
                    t_mark = time.perf_counter()
                    save(done)
                bar.update(1)
            bar.close()
            state["elapsed"] += time.perf_counter() - t_mark
            state["stage"], state["offset"] = stage_index + 1, offset + steps
            state["step"] = 0
        # final weights (generation reuses a finished tokenizer by run id)
        _atomic_torch_save({"run_id": run_id, "state": state, "models": [s.model.state_dict() for s in stages],
                            "optimizer": None, "scheduler": None, "rng": _rng_state(),
                            "metric_rows": metric_rows, "array_rows": array_rows, "complete": True}, ckpt_path)
    except Diverged as exc:
        status, error = "diverged", str(exc)
    except UserError:
        raise
    except Exception as exc:  # recorded in the store; the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    steps_done = state["offset"] if status == "ok" else state["offset"] + max(
        (r[1] - state["offset"] for r in metric_rows if r[0] == "train"), default=0)
    record.update({
        "status": status, "error": error, "steps_done": int(steps_done),
        "wall_time_s": state["elapsed"], "finished_at": datetime.now(timezone.utc),
        "items_per_s": state["items"] / state["train_time"] if state["train_time"] > 0 else None,
    })
    store.write_metrics(spec.task, run_id, metric_rows)
    store.write_arrays(spec.task, run_id, array_rows)
    store.write_run(record)  # last: its presence marks the run complete
    final: dict[str, float] = {}
    last_step: dict[str, int] = {}
    for split, step, name, value in metric_rows:
        if split == "eval" and step >= last_step.get(name, -1):
            final[name], last_step[name] = value, step
    return RunResult(run_id, status, error, final, state["elapsed"])
