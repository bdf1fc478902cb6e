"""vqbench: a benchmark of methods that prevent representation collapse in vector quantization.

The flat public API a plugin author needs (timm-style)::

    import vqbench

    @vqbench.register_method("my-vq", paper="2411.16550", family="vq", beta=0.25)
    class MyVQ(vqbench.Quantizer): ...

    q = vqbench.create_method("my-vq", dim=16, codebook_size=512)
    vqbench.list_methods("vq*")

and ``vqbench.testing.assert_quantizer_conforms`` for the plugin's own test. The layers below this
namespace are described in ARCHITECTURE.md. Importing ``vqbench`` imports nothing: each name is
loaded on first use, so ``vqbench.leaderboard`` (the site builder) never pulls in the registry or torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "QuantizeOutput", "Quantizer", "create_method", "create_task", "list_methods", "list_tasks", "load_plugin",
    "register_method", "register_task",
]

_LAZY = {
    "Quantizer": "vqbench.quantizer", "QuantizeOutput": "vqbench.quantizer",
    **{name: "vqbench.registry" for name in ("create_method", "create_task", "list_methods", "list_tasks",
                                             "load_plugin", "register_method", "register_task")},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqbench' has no attribute {name!r}")
