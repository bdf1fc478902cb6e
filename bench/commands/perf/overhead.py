"""``vqbench perf --overhead``: the runner's training time per step against a bare loop of the same model and data.

The cost of a suite is the runner's cost: this measures what :func:`vqbench.runner.run` adds to the training
itself. For each (task, method) the same spec is trained two ways, in this process, on the same device and
thread count, for the same steps:

* **bare**: the task's stages (built by the runner's own builder, seeded as the runner seeds) driven by a minimal
  loop: the method's ``on_step``, ``batch(step)``, ``loss(batch)`` (under the runner's autocast on CUDA), then
  AdamW with the runner's lr and warm-up + cosine schedule, ``zero_grad``, ``backward``, gradient clipping,
  ``step``. No logging, divergence checks, evaluation, checkpoints or progress bar. Timed: the step loops of
  every stage (optimizers included), not the building of the task.
* **runner**: ``vqbench.runner.run`` of the spec (``force``, no progress bar, rows into a temporary results
  folder that is deleted afterwards). Timed: **the whole call minus the building of the task's stages minus the
  evaluation and validation passes** (both timed by wrapping the runner's ``_build_stages`` and the stages'
  ``evaluate``/``validate`` callables for the duration of the call). What remains is everything the runner does
  for training: its step loop (logged values, the per-window divergence checks), checkpoints, provenance and the
  store's rows. The runner's own accounting of the step loop alone (its ``items_per_s`` figure) is shown next to
  it, and the difference as the per-run cost outside the loop.

Repeats are interleaved (bare, runner, then runner, bare, ...) so both see the same background load on a shared
machine; ``warmup`` repeats of each come first and are not counted. The figures are medians over the repeats;
``overhead = runner / bare - 1``, with the range of the per-pair overheads. ``same weights`` says whether the
two trainings ended with bit-identical weights (the bare loop trains exactly what the runner trains whenever
the task's evaluation draws nothing from the global random streams).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqbench.commands.perf.timing import timed
from vqbench.errors import UserError

if TYPE_CHECKING:
    import torch

    from vqbench.spec import RunSpec

#: the overhead the runner should stay within (reported against, never asserted by a test)
OVERHEAD_TARGET = 0.10


@dataclass(frozen=True)
class OverheadConfig:
    """What ``vqbench perf --overhead`` measures: every (task, method) pair, ``repeats`` timed runs each way."""

    tasks: Sequence[str]
    methods: Sequence[str]
    budget: str = "quick"
    steps: int | None = None  # None: the budget's
    task_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    budget_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    repeats: int = 3
    warmup: int = 1
    device: str = "auto"
    threads: int | None = None  # None: torch's current number of threads

    def __post_init__(self) -> None:
        if not self.tasks or not self.methods:
            raise UserError("--overhead needs at least one task and one method: e.g. --task gmm --method vq")
        if self.repeats < 1 or self.warmup < 0:
            raise UserError(f"--repeats must be >= 1 and --warmup >= 0 (got {self.repeats}, {self.warmup})")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be a positive number of optimizer steps, got {self.steps}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")

    def spec(self, task: str, method: str) -> RunSpec:
        """The RunSpec both trainings of (``task``, ``method``) use."""
        from vqbench.spec import make_spec, task_budget

        overrides = {**self.budget_overrides, **({"steps": self.steps} if self.steps is not None else {})}
        budget: Any = self.budget
        if overrides:
            try:
                budget = task_budget(task, self.budget).with_overrides(**overrides)
            except (TypeError, ValueError) as exc:
                raise UserError(f"bad budget override: {exc}") from None
        return make_spec(task, method, dict(self.task_params), dict(self.method_params), seed=self.seed,
                         budget=budget)


@dataclass
class OverheadRow:
    """The figures of one (task, method): medians over the timed repeats, in milliseconds per optimizer step."""

    task: str
    method: str
    steps: int  # optimizer steps of one training (all stages)
    bare_ms: float = math.nan
    runner_ms: float = math.nan  # whole run minus building and evaluation, per step
    loop_ms: float = math.nan  # the runner's own accounting of its step loop (items_per_s), per step
    outside_s: float = math.nan  # per run: runner time outside its step loop (checkpoints, provenance, rows ...)
    eval_s: float = math.nan  # per run: evaluation and validation passes (not counted in runner_ms)
    pair_overheads: list[float] = field(default_factory=list)
    bare_runs_ms: list[float] = field(default_factory=list)  # every timed repeat, in order
    runner_runs_ms: list[float] = field(default_factory=list)
    same_weights: bool | None = None
    error: str = ""

    @property
    def overhead(self) -> float:
        """``runner / bare - 1`` of the medians (NaN when either is missing)."""
        return self.runner_ms / self.bare_ms - 1 if self.bare_ms > 0 else math.nan

    @property
    def overhead_of_minima(self) -> float:
        """``min(runner) / min(bare) - 1``: each side's least disturbed repeat (robust on a loaded machine)."""
        if not self.bare_runs_ms or not self.runner_runs_ms:
            return math.nan
        return min(self.runner_runs_ms) / min(self.bare_runs_ms) - 1


@dataclass
class _RunnerTiming:
    total_s: float
    build_s: float
    eval_s: float
    loop_s: float  # the runner's own train_time (NaN when the stages declare no items per batch)


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn: Callable[[], Any], device: torch.device, clock: dict[str, float], key: str) -> Callable[[], Any]:
    """``fn`` that adds its (device-synchronised) duration to ``clock[key]``."""

    def wrapped() -> Any:
        _sync(device)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            _sync(device)
            clock[key] += time.perf_counter() - t0

    return wrapped


@contextmanager
def _instrumented_runner(device: torch.device, clock: dict[str, float], stages_out: list[Any]) -> Iterator[None]:
    """While open, the runner's stage building is timed (``clock["build"]``) and the built stages' evaluation and
    validation passes too (``clock["eval"]``); the built stages are appended to ``stages_out``."""
    import vqbench.runner as runner

    original = runner._build_stages

    def build(spec: RunSpec, store: Any, dev: torch.device) -> list[Any]:
        stages = _timed_call(lambda: original(spec, store, dev), device, clock, "build")()
        wrapped = [dataclasses.replace(
            s, evaluate=_timed_call(s.evaluate, device, clock, "eval"),
            validate=None if s.validate is None else _timed_call(s.validate, device, clock, "eval")) for s in stages]
        stages_out.extend(wrapped)
        return wrapped

    runner._build_stages = build
    try:
        yield
    finally:
        runner._build_stages = original


def time_runner(spec: RunSpec, device: torch.device, results: Path) -> tuple[_RunnerTiming, list[Any]]:
    """One ``vqbench.runner.run`` of ``spec`` into ``results``: its timing and its final weights (one state dict
    per stage, from the run's final checkpoint)."""
    import torch

    from vqbench.runner import run
    from vqbench.store import ResultStore

    clock = {"build": 0.0, "eval": 0.0}
    stages: list[Any] = []
    with _instrumented_runner(device, clock, stages):
        _sync(device)
        t0 = time.perf_counter()
        result = run(spec, results, force=True, device=str(device), progress=False)
        _sync(device)
        total = time.perf_counter() - t0
    if result.status != "ok":
        raise RuntimeError(f"the runner's run ended {result.status}: {result.error}")
    store = ResultStore(results)
    runs = store.load_runs()
    row = runs[runs["run_id"] == spec.run_id].iloc[0]
    items = sum(s.items_per_batch * (s.steps or spec.budget.steps) for s in stages)
    rate = row.get("items_per_s")
    loop_s = items / rate if items > 0 and rate is not None and rate > 0 else math.nan
    models = torch.load(store.checkpoint_path(spec.run_id), map_location="cpu", weights_only=False)["models"]
    return _RunnerTiming(total, clock["build"], clock["eval"], loop_s), models


def bare_training(spec: RunSpec, device: torch.device, scratch: Path) -> tuple[Callable[[], None], list[Any]]:
    """(the bare training loop of ``spec``'s stages, ready to be timed; the stages it trains).

    The stages are built and seeded exactly as the runner builds and seeds them (building is not part of the
    loop); the loop is the runner's optimisation without anything else (see the module docstring).
    """
    import torch

    from vqbench.checkpoint import seed_everything
    from vqbench.runner import _build_stages, _lr_lambda
    from vqbench.store import ResultStore

    seed_everything(spec.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)  # as the runner (the same kernels)
    stages = _build_stages(spec, ResultStore(scratch), device)
    budget = spec.budget
    clip = budget.grad_clip if budget.grad_clip > 0 else float("inf")

    def train() -> None:
        for stage in stages:
            steps = stage.steps or budget.steps
            params = [p for p in stage.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=stage.lr or budget.lr,
                                          weight_decay=budget.weight_decay) if params else None
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(budget, steps)) if optimizer else None
            quantizer = stage.quantizer if hasattr(stage.quantizer, "on_step") else None
            stage.model.train()
            for step in range(steps):
                if quantizer is not None:
                    quantizer.on_step(step, steps)
                batch = stage.batch(step)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss, _ = stage.loss(batch)
                if optimizer is not None and loss.requires_grad:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, clip)
                    optimizer.step()
                    scheduler.step()

    return train, stages


def _same_weights(stages: list[Any], models: list[dict[str, Any]]) -> bool:
    import torch

    if len(stages) != len(models):
        return False
    for stage, reference in zip(stages, models):
        state = stage.model.state_dict()
        if state.keys() != reference.keys():
            return False
        if not all(torch.equal(state[k].detach().cpu(), reference[k]) for k in state):
            return False
    return True


def measure_overhead(spec: RunSpec, device: torch.device, repeats: int, warmup: int, scratch: Path) -> OverheadRow:
    """Interleaved repeats of the bare loop and the runner on ``spec`` (see the module docstring)."""
    row = OverheadRow(spec.task, spec.method, 0)
    bare_ms, runner_ms = row.bare_runs_ms, row.runner_runs_ms
    loop_ms: list[float] = []
    outside_s: list[float] = []
    eval_s: list[float] = []
    for r in range(warmup + repeats):
        counted = r >= warmup
        for which in (("bare", "runner") if r % 2 == 0 else ("runner", "bare")):
            if which == "bare":
                train, bare_stages = bare_training(spec, device, scratch / "bare")
                row.steps = sum(s.steps or spec.budget.steps for s in bare_stages)
                _, (elapsed,) = timed(train, device, 1, 0, 0.0)
                if counted:
                    bare_ms.append(1e3 * elapsed / row.steps)
            else:
                timing, models = time_runner(spec, device, scratch / "runner")
                training = timing.total_s - timing.build_s - timing.eval_s
                if counted:
                    runner_ms.append(1e3 * training / row.steps)  # (repeat 0 ran the bare loop first)
                    loop_ms.append(1e3 * timing.loop_s / row.steps)
                    outside_s.append(training - timing.loop_s)
                    eval_s.append(timing.eval_s)
        if counted:
            row.pair_overheads.append(runner_ms[-1] / bare_ms[-1] - 1)
            if row.same_weights is None:
                row.same_weights = _same_weights(bare_stages, models)
    row.bare_ms, row.runner_ms = statistics.median(bare_ms), statistics.median(runner_ms)
    row.loop_ms, row.outside_s = statistics.median(loop_ms), statistics.median(outside_s)
    row.eval_s = statistics.median(eval_s)
    return row


def run_overhead(config: OverheadConfig, log: Callable[[str], None] | None = print) -> list[OverheadRow]:
    """Measure every (task, method) of ``config``; a pair that fails gets a row with its error, the others go on."""
    import torch

    from vqbench.runner import select_device

    device = select_device(config.device)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    rows: list[OverheadRow] = []
    try:
        specs = [config.spec(task, method) for task in config.tasks for method in config.methods]
        with tempfile.TemporaryDirectory(prefix="vqbench-overhead-") as tmp:
            for spec in specs:
                try:
                    row = measure_overhead(spec, device, config.repeats, config.warmup, Path(tmp) / spec.run_id)
                except UserError:
                    raise
                except Exception as exc:  # one failing pair does not stop the table
                    row = OverheadRow(spec.task, spec.method, spec.budget.steps, error=f"{type(exc).__name__}: {exc}")
                rows.append(row)
                if log is not None:
                    log(format_overhead_row(row))
    finally:
        torch.set_num_threads(threads)
    return rows


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}%"


def format_overhead_row(row: OverheadRow) -> str:
    """One line as the rows come (the table is printed at the end)."""
    if row.error:
        return f"{row.task} x {row.method}: error: {row.error}"
    return (f"{row.task} x {row.method}: bare {row.bare_ms:.3f} ms/step, runner {row.runner_ms:.3f} ms/step, "
            f"overhead {_pct(row.overhead)}")


def overhead_table(rows: Sequence[OverheadRow], header: str = "") -> str:
    """The ratio table: one line per (task, method), then what the columns mean."""
    names = ["task", "method", "steps", "bare ms/step", "runner ms/step", "overhead", "of minima", "pairs (min..max)",
             "in-loop ms/step", "outside loop s/run", "eval s/run", "same weights"]
    lines: list[list[str]] = []
    for r in rows:
        if r.error:
            lines.append([r.task, r.method, str(r.steps), "error: " + r.error])
            continue
        pairs = (f"{_pct(min(r.pair_overheads))}..{_pct(max(r.pair_overheads))}" if r.pair_overheads else "n/a")
        same = {True: "yes", False: "no", None: "n/a"}[r.same_weights]
        lines.append([r.task, r.method, str(r.steps), f"{r.bare_ms:.3f}", f"{r.runner_ms:.3f}", _pct(r.overhead),
                      _pct(r.overhead_of_minima), pairs, f"{r.loop_ms:.3f}", f"{r.outside_s:.3f}", f"{r.eval_s:.3f}",
                      same])
    widths = [max([len(n)] + [len(line[i]) for line in lines if len(line) == len(names)])
              for i, n in enumerate(names)]
    out = [header] if header else []
    out.append("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) if len(line) == len(names) else "  ".join(line)
            for line in lines]
    over = [r for r in rows if not r.error and r.overhead > OVERHEAD_TARGET]
    out.append(f"target: overhead <= {100 * OVERHEAD_TARGET:.0f}%" + (
        "; above it: " + ", ".join(f"{r.task} x {r.method}" for r in over) if over else "; every pair is within it"))
    out.append("runner ms/step: the whole run minus building the task and minus evaluation/validation, per step; "
               "in-loop: the runner's own accounting of its step loop; outside loop: the rest of the run (checkpoints, "
               "divergence checks, provenance, rows); overhead = runner / bare - 1 of the medians over the repeats "
               "(of minima: of each side's fastest repeat; pairs: of each interleaved pair).")
    return "\n".join(out)


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, e.g. ``"1.52/1.10/0.98"`` (``"n/a"`` where unknown)."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def overhead_header(config: OverheadConfig, device: torch.device | str) -> str:
    """The conditions of a measurement: device, threads, repeats, and the machine's load when it starts."""
    import torch

    threads = config.threads or torch.get_num_threads()
    steps = f"{config.steps} steps" if config.steps else "the budget's steps"
    return (f"runner overhead on {device} ({threads} torch threads, {os.cpu_count()} CPUs), budget {config.budget}, "
            f"{steps}, {config.repeats} interleaved repeats after {config.warmup} warm-up; "
            f"load average {load_average()}")
