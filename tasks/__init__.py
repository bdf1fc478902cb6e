"""Built-in tasks (data + model + evaluation per setting), registered by name on import.

This package is the entry point ``vqbench.tasks: vqbench = "tasks"``: importing it imports every
task module below, whose decorators register the built-in names.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_") and _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
