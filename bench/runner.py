"""The one generic training loop: RunSpec -> trained + evaluated -> rows in the result store.

Methods and tasks are found by name through the registry, never imported. The loop is seeded and
deterministic on CPU (same spec twice -> identical metrics), evaluates periodically over the whole
eval split, stops a run whose loss or gradients stop being finite with status ``diverged`` (keeping
what was measured), checkpoints atomically and resumes to the same numbers as an uninterrupted run.

Data parallel (one process per device, :mod:`vqbench.distributed`): every rank runs this same loop on
its contiguous shard of each global batch of ``budget.batch_size`` rows; gradients and logged values are
averaged over ranks after each backward; tasks evaluate disjoint parts of a split and combine them
exactly; rank 0 alone writes checkpoints and rows, and every rank returns the same :class:`RunResult`.
A run resumes only on the world size it started with.

:func:`run` reads top to bottom: check the store and versions, build the task's stages, restore a
checkpoint, train each stage with a :class:`_StageTrainer`, write the rows. The counters that travel
in checkpoints are a :class:`Progress`; checkpoint files and generator states live in
:mod:`vqbench.checkpoint`.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vqbench.checkpoint import atomic_torch_save, load_checkpoint, rng_state, seed_everything, set_rng_state
from vqbench.distributed import (
    all_gather_objects,
    average_step_,
    barrier,
    broadcast_object,
    check_divides,
    join,
    refuse_undeclared_state,
    world,
)
from vqbench.errors import UserError
from vqbench.provenance import device_label, git_provenance, package_versions, slurm_job_id
from vqbench.quantizer import uses_feature_bank
from vqbench.registry import METHODS, TASKS, Entry
from vqbench.spec import Budget, RunSpec, canonical_json
from vqbench.store import ResultStore

__all__ = ["DIVERGENCE_LOSS", "Diverged", "Progress", "RunResult", "check_window", "run", "seed_everything",
           "select_device"]

#: a loss above this (or non-finite) ends the run as ``diverged``
DIVERGENCE_LOSS = 1e8

MetricRow = tuple[str, int, str, float]  # (split, step, metric, value)
ArrayRow = tuple[str, int, str, list[float]]  # (split, step, name, values)


class Diverged(Exception):
    """The loss or the gradient norm of a training step stopped being finite (or the loss exploded)."""


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
    status: str  # ok | failed | diverged | timeout | interrupted | skipped (already complete)
    error: str = ""
    final: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    main_metric: str = ""  # the task's headline metric ("" for a skipped run)


def select_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when there is one, else the CPU; a named device must exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return dev


def _lr_lambda(budget: Budget, steps: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup_steps``, then cosine decay to 10% of the peak lr."""
    warmup = min(budget.warmup_steps, max(steps - 1, 0))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# -- the state a run carries across stages and checkpoints -----------------------------------------
@dataclass
class Progress:
    """The run's counters; a checkpoint stores them (as ``state``) and a resumed run continues from them."""

    stage: int = 0  # index of the stage in progress (== number of stages once all are trained)
    step: int = 0  # optimizer steps done in that stage
    elapsed: float = 0.0  # wall time of training and evaluation over every call, in seconds
    train_time: float = 0.0  # time of the training steps alone (the throughput figure)
    items: int = 0  # items trained on (the throughput figure)
    offset: int = 0  # steps of the finished stages: a stage's step s is logged at offset + s


@dataclass
class _Training:
    """One call of :func:`run`: the built stages, the rows measured so far and the call's step budget."""

    spec: RunSpec
    device: torch.device
    checkpoint_path: Path
    show_progress: bool
    stop_after_steps: int | None
    stages: list[Any] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    metric_rows: list[MetricRow] = field(default_factory=list)
    array_rows: list[ArrayRow] = field(default_factory=list)
    resume_from: dict[str, Any] | None = None  # the checkpoint, until the stage it stopped in has restored
    steps_this_call: int = 0
    world_size: int = 1  # processes of the run (one per device)

    def restore(self, checkpoint: dict[str, Any] | None) -> None:
        """Take counters, rows and the finished stages' weights from ``checkpoint`` (if any)."""
        if checkpoint is None:
            return
        started = checkpoint.get("world_size", 1)
        if started != self.world_size:
            raise UserError(f"run {self.spec.run_id} was checkpointed by {started} process(es) and cannot resume "
                            f"on {self.world_size}: rerun it on {started}, or pass --force to start it afresh")
        self.progress = Progress(**checkpoint["state"])
        self.metric_rows, self.array_rows = checkpoint["metric_rows"], checkpoint["array_rows"]
        for stage, state in zip(self.stages[:self.progress.stage], checkpoint["models"]):
            stage.model.load_state_dict(state)
        self.resume_from = checkpoint

    def out_of_steps(self) -> bool:
        """Whether this call has done the ``stop_after_steps`` it was allowed (used to test resume)."""
        return self.stop_after_steps is not None and self.steps_this_call >= self.stop_after_steps

    def save_final(self) -> None:
        """The final weights (a generation task reuses a finished tokenizer by run id); rank 0 writes them."""
        if not world().is_main:
            return
        atomic_torch_save({"run_id": self.spec.run_id, "state": asdict(self.progress),
                           "models": [s.model.state_dict() for s in self.stages], "optimizer": None,
                           "scheduler": None, "rng": rng_state(), "metric_rows": self.metric_rows,
                           "array_rows": self.array_rows, "complete": True, "world_size": self.world_size},
                          self.checkpoint_path)

    def steps_done(self, status: str) -> int:
        """Optimizer steps done: all of them for an ``ok`` run, else up to the last logged training step."""
        offset = self.progress.offset
        if status == "ok":
            return offset
        return offset + max((r[1] - offset for r in self.metric_rows if r[0] == "train"), default=0)

    def final_metrics(self) -> dict[str, float]:
        """Each eval metric at the last step it was measured."""
        final: dict[str, float] = {}
        last_step: dict[str, int] = {}
        for split, step, name, value in self.metric_rows:
            if split == "eval" and step >= last_step.get(name, -1):
                final[name], last_step[name] = value, step
        return final


@dataclass
class _StageTrainer:
    """Trains one stage: its optimizer and schedule, log windows, evaluations and checkpoints."""

    run: _Training
    index: int
    stage: Any  # vqbench.tasks.base.Stage
    steps: int
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    offset: int
    start: int = 0
    running: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    restored: bool = False  # continues from a checkpoint written inside this stage

    @classmethod
    def build(cls, run: _Training, index: int) -> _StageTrainer:
        """AdamW over the stage's trainable parameters with the warmup + cosine schedule (none if it has none)."""
        stage, budget = run.stages[index], run.spec.budget
        steps = stage.steps or budget.steps
        params = [p for p in stage.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.lr or budget.lr,
                                      weight_decay=budget.weight_decay) if params else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(budget, steps)) if optimizer else None
        return cls(run, index, stage, steps, params, optimizer, scheduler, run.progress.offset)

    # intervals (in steps of this stage)
    @property
    def eval_interval(self) -> int:
        return self.run.spec.budget.eval_interval

    @property
    def checkpoint_interval(self) -> int:
        return self.run.spec.budget.checkpoint_interval or self.eval_interval

    @property
    def log_interval(self) -> int:
        return max(1, min(self.eval_interval, 50))

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint written inside this stage: weights, optimizer, schedule, RNG, log window."""
        self.stage.model.load_state_dict(checkpoint["models"][self.index])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng_ranks"][world().rank] if "rng_ranks" in checkpoint else checkpoint["rng"])
        self.start = checkpoint["state"]["step"]
        self.running = checkpoint.get("running", {})
        self.restored = True

    def train(self) -> bool:
        """Train from ``start`` to the stage's last step; ``False`` when the call's step budget ran out first."""
        progress, steps = self.run.progress, self.steps
        self.stage.model.train()
        if self.start == 0 and not self.restored:  # (a checkpoint at step 0 holds that evaluation already)
            self.evaluate(0)
        spec = self.run.spec
        bar = tqdm(total=steps, initial=self.start, disable=not (self.run.show_progress and world().is_main),
                   leave=False,
                   desc=f"{spec.method} on {spec.task} [{self.stage.name}]", dynamic_ncols=True)
        t_mark = time.perf_counter()
        for step in range(self.start, steps):
            if self.run.out_of_steps():
                progress.elapsed += time.perf_counter() - t_mark
                self.save(step)
                bar.close()
                return False
            t0 = time.perf_counter()
            self.train_step(step)
            done = step + 1
            evaluate = done % self.eval_interval == 0 or done == steps
            checkpoint = done % self.checkpoint_interval == 0 and done < steps
            window_end = done % self.log_interval == 0 or evaluate or checkpoint
            if window_end and self.run.device.type == "cuda":
                torch.cuda.synchronize(self.run.device)  # the window's queued GPU work counts as training time
            progress.train_time += time.perf_counter() - t0
            progress.items += self.stage.items_per_batch
            self.run.steps_this_call += 1
            if window_end:
                self.end_window(done, bar)  # raises Diverged
            if evaluate:
                self.evaluate(done)
            if checkpoint:
                progress.elapsed += time.perf_counter() - t_mark
                t_mark = time.perf_counter()
                self.save(done)
            bar.update(1)
        bar.close()
        progress.elapsed += time.perf_counter() - t_mark
        progress.stage, progress.offset, progress.step = self.index + 1, self.offset + steps, 0
        return True

    def train_step(self, step: int) -> None:
        """One optimizer step; the loss and logs stay tensors in the window (no host sync per step)."""
        stage, quantizer = self.stage, self.stage.quantizer
        if quantizer is not None and hasattr(quantizer, "on_step"):  # optional for modules outside Quantizer
            quantizer.on_step(step, self.steps)
        batch = stage.batch(step)
        device = self.run.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, logs = stage.loss(batch)
        values = {"loss": loss, **logs}
        if self.optimizer is not None and loss.requires_grad:  # (a warm-up step may train nothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            values = average_step_(self.params, values)  # over ranks: gradients and logged values (or as is)
            clip = self.run.spec.budget.grad_clip
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
            self.optimizer.step()
            self.scheduler.step()
            values["grad_norm"] = grad_norm
        else:
            values = average_step_([], values)
        for name, value in values.items():
            self.running.setdefault(name, []).append(torch.as_tensor(value).detach().float().reshape(()))

    def end_window(self, done: int, bar: tqdm) -> None:
        """Check the window for divergence; at a log step write its means as ``train`` rows and start a new one."""
        means = check_window(self.running, done, self.stage.name)
        if done % self.log_interval == 0 or done == self.steps:
            for name, value in sorted(means.items()):
                self.run.metric_rows.append(("train", self.offset + done, name, value))
            self.running.clear()
            bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)

    def evaluate(self, step: int) -> None:
        """The stage's evaluation over the whole eval split, as ``eval`` rows at ``offset + step``, then over
        the validation split (when the stage has one) as ``validation`` rows.

        The validation pass runs with every random stream saved and restored, so adding it changes neither
        the training nor the eval numbers of a run.
        """
        self.stage.model.eval()
        self._record("eval", step, self.stage.evaluate())
        if self.stage.validate is not None:
            streams = rng_state()
            self._record("validation", step, self.stage.validate())
            set_rng_state(streams)
        self.stage.model.train()

    def _record(self, split: str, step: int, ev: Any) -> None:
        for name, value in sorted(ev.metrics.items()):
            self.run.metric_rows.append((split, self.offset + step, name, float(value)))
        for name, values in sorted(ev.arrays.items()):
            self.run.array_rows.append((split, self.offset + step, name, [float(v) for v in values]))

    def save(self, step: int) -> None:
        """A resumable checkpoint at ``step`` of this stage (atomically replaces the previous one), by rank 0;
        with every rank's random-number state (ranks draw alike, but a method may draw per rank)."""
        run = self.run
        rngs = all_gather_objects(rng_state()) if run.world_size > 1 else None
        if not world().is_main:
            return
        extra = {"world_size": run.world_size, **({"rng_ranks": rngs} if rngs is not None else {})}
        atomic_torch_save({
            "run_id": run.spec.run_id, "state": {**asdict(run.progress), "stage": self.index, "step": step},
            "models": [s.model.state_dict() for s in run.stages[:self.index + 1]],
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None, "rng": rng_state(),
            "metric_rows": run.metric_rows, "array_rows": run.array_rows, "running": self.running, **extra},
            run.checkpoint_path)


# -- building ---------------------------------------------------------------------------------------
def _run_record(spec: RunSpec, task_entry: Entry, method_entry: Entry, device: torch.device) -> dict[str, Any]:
    """The run row's spec, registry metadata and provenance (status and timings are added at the end)."""
    record: dict[str, Any] = {
        "run_id": spec.run_id, "task": spec.task, "task_version": spec.task_version,
        "task_params": canonical_json(spec.task_params), "method": spec.method,
        "method_version": spec.method_version, "method_params": canonical_json(spec.method_params),
        "method_family": method_entry.family, "method_source": method_entry.source,
        "method_paper": method_entry.paper, "method_description": method_entry.description,
        "method_differences": method_entry.differences,
        "method_defaults": canonical_json(method_entry.defaults), "task_source": task_entry.source,
        "task_kind": task_entry.kind, "task_description": task_entry.description,
        "seed": spec.seed, "budget": canonical_json(asdict(spec.budget)),
        "tags": list(spec.tags), "spec": spec.to_json(), "main_metric": task_entry.main_metric,
        "higher_is_better": task_entry.higher_is_better, "device": device_label(device),
        "hostname": socket.gethostname(), "world_size": world().size,
        "versions": json.dumps(package_versions(), sort_keys=True),
        "slurm_job_id": slurm_job_id(), "started_at": datetime.now(timezone.utc), "error": "",
    }
    record["git_commit"], record["git_dirty"] = git_provenance()
    return record


def _build_stages(spec: RunSpec, store: ResultStore, device: torch.device) -> list[Any]:
    """Task and quantizer from the registry, the task set up on ``device``, its stages; failures are UserErrors."""
    try:
        task = TASKS.create(spec.task, **spec.task_params)
        method_kwargs = {"dim": task.latent_dim, "codebook_size": task.codebook_size, **spec.method_params}
        quantizer = METHODS.create(spec.method, **method_kwargs)
        refuse_undeclared_state(quantizer, spec.method)  # before any data is loaded
        task.bind(spec, store.root)  # e.g. to reuse a finished tokenizer run
        task.setup(device, spec.seed)
        bank = task.feature_bank()
        if bank is not None and uses_feature_bank(quantizer):
            quantizer.to(device)  # the k-means over the bank runs on the run's device
            quantizer.init_from_feature_bank(bank.to(device))
        return task.stages(quantizer, spec.budget)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot build run {spec.run_id} ({spec.task} x {spec.method}): "
                        f"{type(exc).__name__}: {exc}") from exc


# -- the loop --------------------------------------------------------------------------------------
def run(spec: RunSpec, results: str | Path = "results", *, force: bool = False, device: str | None = None,
        progress: bool | None = None, resume: bool = True, stop_after_steps: int | None = None) -> RunResult:
    """Train and evaluate ``spec``; write its rows to the store under ``results``.

    A run whose id is already complete is not run again (unless ``force``). With ``resume`` a run
    continues from its last checkpoint. ``stop_after_steps`` stops (without a run row, like a killed
    job) after that many optimizer steps in this call: used to test resume.

    Launched as several processes (``torchrun``, Slurm tasks, or a process group the caller initialised),
    every rank calls this with the same arguments; ``budget.batch_size`` is the global batch.
    """
    dev = join(select_device(device))  # this rank's device (the process group is joined if launched as several)
    size = world().size
    check_divides(spec.budget.batch_size)
    store = ResultStore(results)
    if world().is_main:
        store.ensure_writable()
    if broadcast_object(not force and store.is_complete(spec.run_id)):  # rank 0 decides for all
        return RunResult(spec.run_id, "skipped")
    task_entry, method_entry = TASKS.get(spec.task), METHODS.get(spec.method)
    if (task_entry.version, method_entry.version) != (spec.task_version, spec.method_version):
        raise UserError(f"spec {spec.run_id} was made for {spec.task} v{spec.task_version} / {spec.method} "
                        f"v{spec.method_version} but the registry has v{task_entry.version} / "
                        f"v{method_entry.version}: rebuild the spec")
    training = _Training(spec, dev, store.checkpoint_path(spec.run_id),
                         sys.stderr.isatty() if progress is None else progress, stop_after_steps, world_size=size)
    if (force or not resume) and world().is_main:
        training.checkpoint_path.unlink(missing_ok=True)
    barrier()  # (every rank reads the same checkpoint, or none)
    record = _run_record(spec, task_entry, method_entry, dev)
    seed_everything(spec.seed)  # the same on every rank: identical initial weights and random streams
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    status, error = "ok", ""
    try:
        training.stages = _build_stages(spec, store, dev)
        for stage in training.stages:
            check_divides(stage.items_per_batch, f"the batch of stage {stage.name}")
        training.restore(load_checkpoint(training.checkpoint_path) if resume else None)
        barrier()  # every rank has read the checkpoint before rank 0 may replace it
        for index in range(training.progress.stage, len(training.stages)):
            trainer = _StageTrainer.build(training, index)
            if training.resume_from is not None:
                trainer.restore(training.resume_from)
                training.resume_from = None
            if not trainer.train():
                barrier()  # rank 0's checkpoint is on disk when any rank returns
                return RunResult(spec.run_id, "interrupted", main_metric=task_entry.main_metric or "")
        training.save_final()
    except Diverged as exc:
        status, error = "diverged", str(exc)
    except UserError:
        raise
    except Exception as exc:  # recorded in the store; the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    p = training.progress
    result = RunResult(spec.run_id, status, error, training.final_metrics(), p.elapsed, task_entry.main_metric or "")
    if world().is_main:
        record.update({
            "status": status, "error": error, "steps_done": training.steps_done(status),
            "wall_time_s": p.elapsed, "finished_at": datetime.now(timezone.utc),
            "items_per_s": p.items / p.train_time if p.train_time > 0 else None,
        })
        store.write_metrics(spec.task, spec.run_id, training.metric_rows)
        store.write_arrays(spec.task, spec.run_id, training.array_rows)
        store.write_run(record)  # last: its presence marks the run complete
    return broadcast_object(result)  # after rank 0 wrote: every rank returns rank 0's result
