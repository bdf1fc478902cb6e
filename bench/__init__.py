"""vqbench core: registries, run specs, the runner, collapse metrics, the Parquet store and the CLI."""

__version__ = "0.1.0"
