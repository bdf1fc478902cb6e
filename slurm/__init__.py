"""Sweeps: YAML grids of runs, submitted to Slurm (job arrays through submitit), local processes or
this process, safe to rerun and to interrupt.

- ``sweep``: load, validate (one-line errors with file, line and key) and expand sweep files; the
  official suites are ``suites/quick.yaml`` and ``suites/paper.yaml``;
- ``profile``: executor profiles (``profiles/gpu.yaml``, ``gpu-4.yaml``, ``gpu-8.yaml``, ``cpu-debug.yaml``
  or inline), resolved with a sweep's run shape (``gpus_per_run`` / ``ranks_per_run``, ``nodes``);
- ``launch``: ``run_sweep``, ``sweep_status`` (the store is the source of truth);
- ``collect``: ``collect_sweep``, the sweep's table of final metrics and its printed seed summary;
- ``inprocess``: the debug executor (this process, worker processes, or the ranks of a run as processes);
- ``worker``: what a job runs (checkpointable: requeued on preemption/timeout, resumed by the runner; every
  rank of a data-parallel run);
- ``jobs``: submission and attempt records beside the store, and the scheduler's view (squeue, sacct);
- ``snapshot``: the copy of the code and file plugins that jobs import;
- ``cli``: ``vqbench sweep run|status|collect``;
- ``testcluster.sh``: a single-node Slurm on this machine for the tests.
"""
