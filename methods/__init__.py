"""Built-in quantizers, one module per method family, registered by name on import.

This package is the entry point ``vqbench.methods: vqbench = "methods"``: importing it imports
every family module below, whose decorators register the built-in names.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_") and _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
