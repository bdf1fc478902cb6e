"""Sweeps: YAML grids of runs, submitted to Slurm (job arrays through submitit), local processes or
this process, safe to rerun and to interrupt.

- ``sweep``: load, validate (one-line errors with file, line and key) and expand sweep files; the
  official suites are ``suites/quick.yaml`` and ``suites/paper.yaml``;
- ``profile``: executor profiles (``profiles/gpu.yaml``, ``profiles/cpu-debug.yaml`` or inline);
- ``launch``: ``run_sweep``, ``sweep_status``, ``collect_sweep`` (the store is the source of truth);
- ``worker``: what a job runs (checkpointable: requeued on preemption/timeout, resumed by the runner);
- ``jobs``: submission and attempt records beside the store, and the scheduler's view (squeue, sacct);
- ``snapshot``: the copy of the code and file plugins that jobs import;
- ``cli``: ``vqbench sweep run|status|collect``;
- ``testcluster.sh``: a single-node Slurm on this machine for the tests.
"""
