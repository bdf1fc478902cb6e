"""The official sweep files (the `quick` and `paper` suites); `slurm.sweep.load_sweep("quick")` finds them."""
