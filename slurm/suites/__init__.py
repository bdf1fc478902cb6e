"""The official sweep files (the `quick` and `paper` suites); `vqbench.slurm.sweep.load_sweep("quick")` finds them."""
