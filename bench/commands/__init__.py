"""The top floor: commands a user runs (CLI, perf, the GPU check, the plugin scaffold, findings).

Nothing below imports this package; it may import every layer (``vqbench``'s ground modules,
``vqbench.methods``, ``vqbench.tasks``, ``vqbench.slurm``, ``vqbench.leaderboard``), lazily per command.
"""
