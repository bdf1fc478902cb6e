"""Executor profiles (`gpu`, `gpu-4`, `gpu-8`, `cpu-debug`) that sweep files name under `executor:`."""
