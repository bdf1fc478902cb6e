"""Executor profiles (`gpu`, `cpu-debug`) that sweep files name under `executor:`."""
