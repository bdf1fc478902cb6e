"""The debug executor: a sweep's runs on this machine, without a scheduler, one after the other.

- one process per run (``ranks`` 1): in this process, or in ``workers`` spawned processes of one torch thread
  each (results are the same: every run is seeded and independent);
- a data-parallel run of ``R`` ranks: ``R`` spawned processes on this machine (gloo on CPUs), with RANK /
  WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set as a Slurm job's tasks would have them; rank 0's
  outcome is the run's. A rank that dies takes the others down (they would wait for it in a collective).

Attempts are recorded under the driver's job id ``debug-<pid>`` (the submission's), from every process.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from vqbench.errors import UserError
from vqbench.slurm.worker import SweepWorker
from vqbench.spec import RunSpec
from vqbench.store import format_run_summary

#: seconds the other ranks of a run get to end on their own once one rank died
RANK_GRACE_S = 10.0


def run_debug(results: str, sweep_name: str, specs: list[RunSpec], device: str | None, say: Callable[[str], None],
              workers: int = 1, ranks: int = 1) -> list[dict[str, Any]]:
    """Run ``specs`` on this machine (see the module docstring); one outcome dict per spec, in order."""
    import multiprocessing

    from vqbench.registry import loaded_plugins

    job_id = f"debug-{os.getpid()}"
    plugins = tuple(loaded_plugins())  # the sweep's and the command line's: spawned processes load them too
    out = []
    if ranks > 1:
        for spec in specs:
            outcome = run_ranks((results, sweep_name, device, spec.to_json(), plugins, job_id), ranks)
            out.append(outcome)
            say(run_line(spec, outcome))
        return out
    if workers > 1 and len(specs) > 1:
        # spawn, not fork: a forked child of a process that already ran OpenMP regions can hang
        context = multiprocessing.get_context("spawn")
        args = [(results, sweep_name, device, spec.to_json(), plugins, job_id) for spec in specs]
        with context.Pool(min(workers, len(specs))) as pool:
            for spec, outcome in zip(specs, pool.imap(debug_one, args)):
                out.append(outcome)
                say(run_line(spec, outcome))
            pool.close()  # let the workers exit cleanly (terminate() leaves a semaphore behind)
            pool.join()
        return out
    for spec in specs:
        outcome = debug_one((results, sweep_name, device, spec.to_json(), (), job_id), threads=None)
        out.append(outcome)
        say(run_line(spec, outcome))
    return out


def debug_one(args: tuple[str, str, str | None, str, tuple[str, ...], str], threads: int | None = 1,
              ranks: int = 1) -> dict[str, Any]:
    """One run of the debug executor (in this process, in a pool worker, or as one rank of a run)."""
    from vqbench.registry import load_plugin

    results, sweep_name, device, spec_json, plugins, job_id = args
    for plugin in plugins:
        load_plugin(plugin)
    worker = SweepWorker(results, sweep_name, plugins=[], device=device, verbose=False, progress=None,
                         threads=threads, ranks=ranks, job_id=job_id)
    run_id = RunSpec.from_json(spec_json).run_id
    try:
        return worker([spec_json])[0]
    except (RuntimeError, UserError) as exc:  # the worker raises after recording a run that raised
        return {"run_id": run_id, "status": "error", "error": str(exc)}


def run_ranks(args: tuple[str, str, str | None, str, tuple[str, ...], str], ranks: int) -> dict[str, Any]:
    """One run as ``ranks`` spawned processes on this machine; rank 0's outcome (or why a rank died)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    port = free_port()
    procs = [context.Process(target=_rank_main, args=(args, rank, ranks, port, queue), daemon=False)
             for rank in range(ranks)]
    for proc in procs:
        proc.start()
    first_death: tuple[int, int] | None = None
    deadline: float | None = None
    while any(p.is_alive() for p in procs):
        for rank, proc in enumerate(procs):
            proc.join(timeout=0.1)
            if first_death is None and proc.exitcode not in (None, 0):
                first_death, deadline = (rank, proc.exitcode), time.monotonic() + RANK_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
    for proc in procs:
        proc.join()
    outcome = None if queue.empty() else queue.get()
    run_id = RunSpec.from_json(args[3]).run_id
    if first_death is not None:
        rank, code = first_death
        why = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        died = f"rank {rank} of {ranks} {why}"
        if outcome is None or outcome.get("status") != "error":
            return {"run_id": run_id, "status": "error", "error": f"{died}; the run did not finish"}
        outcome["error"] = f"{outcome.get('error', '')} ({died})"
    return outcome or {"run_id": run_id, "status": "error", "error": f"rank 0 of {ranks} reported nothing"}


def _rank_main(args: tuple[str, str, str | None, str, tuple[str, ...], str], rank: int, ranks: int, port: int,
               queue: Any) -> None:
    """One spawned rank: the variables torch.distributed reads, then the run; exit 1 when it raised."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "VQBENCH_RANKS_SPAWNED": "1"})
    outcome = debug_one(args, threads=1, ranks=ranks)
    if rank == 0:
        queue.put(outcome)
    if outcome.get("status") == "error":
        raise SystemExit(1)


def free_port() -> int:
    """A TCP port free on this machine right now (the rendezvous of spawned ranks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_line(spec: RunSpec, outcome: dict[str, Any]) -> str:
    """One printed line per finished run."""
    return format_run_summary(spec.run_id, spec.method, spec.task, spec.seed, outcome["status"],
                              error=outcome.get("error") or "", final=outcome.get("final"),
                              main_metric=outcome.get("main_metric"), wall_time_s=outcome.get("wall_time_s"))
