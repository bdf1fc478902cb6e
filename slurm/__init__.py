"""Sweeps and job launching through submitit (Slurm, local and debug executors)."""
