"""The two implementations a forward+backward cell compares: vqbench's registered method and vector-quantize-pytorch's
equivalent, one adapter per method in :data:`VQP_ADAPTERS`.

A builder returns ``(module, call, true K)`` where ``call(z) -> (z_q, loss or None)``. torch, the methods and
vector-quantize-pytorch are imported only when a builder runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vqbench.commands.perf.plan import Unsupported, cell_params, fsq_levels

Call = Callable[[Any], tuple[Any, Any]]
Built = tuple[Any, Call, int]


@dataclass(frozen=True)
class VqpAdapter:
    """How vector-quantize-pytorch runs one vqbench method: what (said in the docs) and how to build it."""

    equivalent: str
    build: Callable[[Any, int, int], Built]  # (the vector_quantize_pytorch module, dim, K) -> (module, call, K)


def _vector_quantize(**options: Any) -> Callable[[Any, int, int], Built]:
    """A builder of ``VectorQuantize`` with ``options`` over vqbench's commitment weight, no rotation trick."""

    def build(vqp: Any, dim: int, k: int) -> Built:
        kwargs = {"dim": dim, "codebook_size": k, "commitment_weight": 0.25, "rotation_trick": False, **options}
        module = vqp.VectorQuantize(**kwargs)

        def call(z):
            q, _, loss = module(z)
            return q, loss

        return module, call, k

    return build


def _simvq(vqp: Any, dim: int, k: int) -> Built:
    module = vqp.SimVQ(dim=dim, codebook_size=k, rotation_trick=False)

    def call(z):
        q, _, loss = module(z)
        return q, loss

    return module, call, k


def _fsq(vqp: Any, dim: int, k: int) -> Built:
    levels = fsq_levels(k)
    if levels is None:
        from vqbench.methods.fsq import recommended_levels

        levels = recommended_levels(k)
    if min(levels) < 3:
        raise Unsupported(f"vector-quantize-pytorch's FSQ needs levels > 2 by default, got {levels}")
    module = vqp.FSQ(levels=levels, dim=dim)

    def call(z):
        q, _ = module(z)
        return q, None

    return module, call, math.prod(levels)


def _lfq(spherical: bool) -> Callable[[Any, int, int], Built]:
    """LFQ (``spherical=False``) or BSQ as LFQ on the sphere."""

    def build(vqp: Any, dim: int, k: int) -> Built:
        if k < 2 or k & (k - 1):
            raise Unsupported(f"vector-quantize-pytorch's LFQ needs a power-of-two codebook size, got {k}")
        module = vqp.LFQ(dim=dim, codebook_size=k, entropy_loss_weight=0.1, diversity_gamma=1.0,
                         commitment_loss_weight=0.0 if spherical else 0.25, spherical=spherical)
        inv_temperature = 1.0 if spherical else 100.0

        def call(z):
            ret = module(z, inv_temperature=inv_temperature)
            return ret.quantized, ret.entropy_aux_loss

        return module, call, k

    return build


_LEARNABLE = {"learnable_codebook": True, "ema_update": False}

#: vqbench method name -> its vector-quantize-pytorch counterpart (methods not here have none).
VQP_ADAPTERS: dict[str, VqpAdapter] = {
    "vq": VqpAdapter("VectorQuantize(learnable_codebook=True, ema_update=False, rotation_trick=False)",
                     _vector_quantize(**_LEARNABLE)),
    "vq-ema": VqpAdapter("VectorQuantize(decay=0.99, eps=1e-5, rotation_trick=False)",
                         _vector_quantize(decay=0.99, eps=1e-5)),
    "vq-kmeans": VqpAdapter("VectorQuantize(kmeans_init=True, kmeans_iters=10, learnable_codebook=True, "
                            "ema_update=False, rotation_trick=False)",
                            _vector_quantize(**_LEARNABLE, kmeans_init=True, kmeans_iters=10)),
    "vq-rotation": VqpAdapter("VectorQuantize(learnable_codebook=True, ema_update=False, rotation_trick=True)",
                              _vector_quantize(**_LEARNABLE, rotation_trick=True)),
    "simvq": VqpAdapter("SimVQ(rotation_trick=False)", _simvq),
    "fsq": VqpAdapter("FSQ(levels=<the same levels>)", _fsq),
    "lfq": VqpAdapter("LFQ(entropy_loss_weight=0.1, commitment_loss_weight=0.25), inv_temperature=100",
                      _lfq(spherical=False)),
    "bsq": VqpAdapter("LFQ(spherical=True, entropy_loss_weight=0.1), inv_temperature=1 (its codebook entropy is "
                      "exact over all K codes; vqbench's bsq factorises it per bit)", _lfq(spherical=True)),
}


def vqp_equivalent(method: str) -> str | None:
    """What vector-quantize-pytorch runs for ``method`` (None: it has no equivalent)."""
    adapter = VQP_ADAPTERS.get(method)
    return None if adapter is None else adapter.equivalent


def build_vqbench(method: str, dim: int, codebook_size: int) -> Built:
    """vqbench's registered ``method`` at the cell's K (see :func:`cell_params`)."""
    from vqbench.errors import UserError
    from vqbench.registry import METHODS

    if method not in METHODS:
        raise Unsupported(f"method {method!r} is not registered in this vqbench")
    params, _ = cell_params(method, codebook_size)
    try:
        module = METHODS.create(method, dim=dim, codebook_size=codebook_size, **params)
    except UserError as exc:
        raise Unsupported(str(exc)) from None

    def call(z):
        out = module(z)
        return out.z_q, out.loss

    return module, call, int(module.codebook_size)


def build_vqp(method: str, dim: int, codebook_size: int) -> Built:
    """vector-quantize-pytorch's equivalent of ``method`` (:data:`VQP_ADAPTERS`)."""
    adapter = VQP_ADAPTERS.get(method)
    if adapter is None:
        raise Unsupported(f"vector-quantize-pytorch has no equivalent of {method!r}")
    try:
        import vector_quantize_pytorch as vqp
    except ImportError:
        raise Unsupported("vector-quantize-pytorch is not installed (pip install vector-quantize-pytorch)") from None
    return adapter.build(vqp, dim, codebook_size)
