"""The conformance kit: the Quantizer contract (ARCHITECTURE.md, ``vqbench.quantizer``) as runnable checks.

One source of truth for the contract: built-in methods are tested with it (``tests/test_contract.py``),
``vqbench check method NAME`` prints it, and plugin authors call it from their own pytest::

    from vqbench.testing import assert_quantizer_conforms
    def test_my_method():
        assert_quantizer_conforms("my-method")

Each check returns a :class:`CheckResult` whose message says what to fix when it fails.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vqbench.registry import METHODS

WARMUP_STEPS = 8  # training forwards (with on_step) before the checks, so schedules/lazy inits have run


@dataclass
class CheckResult:
    name: str
    status: str  # pass | fail | skip
    message: str = ""

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.name}" + (f": {self.message}" if self.message else "")


def _build(name: str, dim: int, codebook_size: int, seed: int, params: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(seed)
    return METHODS.create(name, dim=dim, codebook_size=codebook_size, **params)


def _inputs(n: int, dim: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, n // 2, dim, generator=g) * scale


def _warm_up(q: torch.nn.Module, dim: int, seed: int) -> None:
    """Train-mode forwards with on_step so lazy initialisation and schedules have happened."""
    q.train()
    for step in range(WARMUP_STEPS):
        if hasattr(q, "on_step"):
            q.on_step(step, WARMUP_STEPS)
        out = q(_inputs(64, dim, seed + step))
        out.loss.backward() if out.loss.requires_grad else None
    q.zero_grad(set_to_none=True)
    q.eval()


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_quantizer(name: str, *, dim: int = 8, codebook_size: int = 16, params: dict[str, Any] | None = None,
                    seed: int = 0) -> list[CheckResult]:
    """Run every contract check on registered method ``name``; never raises for a failing check."""
    params = dict(params or {})
    results: list[CheckResult] = []

    def check(label: str, fn: Callable[[], str | None]) -> None:
        try:
            message = fn()
        except _Skip as skip:
            results.append(CheckResult(label, "skip", str(skip)))
            return
        except AssertionError as exc:
            results.append(CheckResult(label, "fail", str(exc)))
            return
        except Exception as exc:
            results.append(CheckResult(label, "fail", f"raised {type(exc).__name__}: {exc}"))
            return
        results.append(CheckResult(label, "pass", message or ""))

    entry = METHODS.get(name)
    state: dict[str, Any] = {}

    def metadata() -> None:
        missing = [k for k in ("description", "family") if not getattr(entry, k) or getattr(entry, k) == "other"]
        assert not missing, (f"registry entry lacks {', '.join(missing)}: pass description=..., family=... to "
                             "@register_method")
        assert isinstance(entry.version, int) and entry.version >= 1, "version must be an int >= 1"
        return None if entry.paper else "no paper (arXiv id) given: fine for a new idea, cite one if it exists"

    def build() -> None:
        q = _build(name, dim, codebook_size, seed, params)
        assert isinstance(q, torch.nn.Module), "the builder must return a torch.nn.Module"
        assert isinstance(q.dim, int) and q.dim == dim, f"set self.dim = dim (got {getattr(q, 'dim', None)!r})"
        assert isinstance(q.codebook_size, int) and q.codebook_size >= 1, "set self.codebook_size to the true K"
        _warm_up(q, dim, seed)
        state["q"] = q

    check("metadata", metadata)
    check("builds and trains a few steps", build)
    if "q" not in state:
        return results
    q = state["q"]
    k = q.codebook_size

    def shapes() -> None:
        for mode in ("train", "eval"):
            q.train(mode == "train")
            z = _inputs(64, dim, seed + 100)
            out = q(z)
            assert out.z_q.shape == z.shape, f"{mode}: z_q has shape {tuple(out.z_q.shape)}, expected {tuple(z.shape)}"
            assert out.indices.shape == z.shape[:-1], (f"{mode}: indices have shape {tuple(out.indices.shape)}, "
                                                       f"expected {tuple(z.shape[:-1])} (one id per vector)")
            assert out.indices.dtype == torch.long, f"{mode}: indices must be torch.long, got {out.indices.dtype}"
            lo, hi = int(out.indices.min()), int(out.indices.max())
            assert 0 <= lo and hi < k, f"{mode}: indices span [{lo}, {hi}], outside [0, {k})"
            assert out.loss.dim() == 0, f"{mode}: loss must be a scalar tensor"
            for key, value in out.stats.items():
                assert torch.is_tensor(value) and value.numel() == 1, f"stats[{key!r}] must be a scalar tensor"
        q.eval()

    def gradient() -> None:
        q.train()
        trained = copy.deepcopy(q)
        z = _inputs(64, dim, seed + 200).requires_grad_(True)
        out = trained(z)
        (out.z_q.pow(2).sum() + out.loss).backward()
        assert z.grad is not None, "no gradient reaches z: give z_q a gradient path (e.g. straight_through)"
        assert torch.isfinite(z.grad).all(), "the gradient to z has NaN/inf"
        assert z.grad.abs().sum() > 0, "the gradient to z is zero everywhere"
        q.eval()

    def decode() -> None:
        q.eval()
        z = _inputs(64, dim, seed + 300)
        with torch.no_grad():
            out = q(z)
            decoded = q.decode_indices(out.indices)
        assert decoded.shape == out.z_q.shape, \
            f"decode_indices gives {tuple(decoded.shape)}, z_q {tuple(out.z_q.shape)}"
        err = float((decoded - out.z_q).abs().max())
        tol = 1e-4 * max(1.0, float(out.z_q.abs().max()))
        assert err <= tol, f"decode_indices(indices) differs from z_q by {err:.3g} (eval mode): they must agree"

    def codebook() -> str | None:
        codes = q.codebook()
        if codes is None:
            assert k > 2**16, f"codebook() returned None although K = {k} <= 2**16 can be enumerated"
            return "not enumerable (K > 2**16)"
        assert codes.shape == (k, dim), f"codebook() has shape {tuple(codes.shape)}, expected ({k}, {dim})"
        return None

    def determinism() -> None:
        outs = []
        for _ in range(2):
            qq = _build(name, dim, codebook_size, seed, params)
            torch.manual_seed(seed + 7)
            _warm_up(qq, dim, seed)
            with torch.no_grad():
                outs.append(qq(_inputs(64, dim, seed + 400)))
        assert torch.equal(outs[0].indices, outs[1].indices) and torch.allclose(outs[0].z_q, outs[1].z_q), \
            "two builds under the same seed differ: draw randomness only from torch's global RNG"

    def state_dict_round_trip() -> None:
        other = _build(name, dim, codebook_size, seed + 1, params)
        other.load_state_dict(q.state_dict())
        other.eval()
        z = _inputs(64, dim, seed + 500)
        with torch.no_grad():
            a, b = q(z), other(z)
        assert torch.equal(a.indices, b.indices) and torch.allclose(a.z_q, b.z_q, atol=1e-6), \
            "a fresh instance loaded with state_dict() behaves differently: keep all state in buffers/parameters"

    def eval_is_pure() -> None:
        before = {k_: v.clone() for k_, v in q.state_dict().items()}
        q.eval()
        with torch.no_grad():
            q(_inputs(64, dim, seed + 600))
        assert _states_equal(before, q.state_dict()), \
            "eval-mode forward changed the state: update only if self.training"

    def extremes() -> None:
        for label, z in (("zeros", torch.zeros(2, 32, dim)), ("huge", _inputs(64, dim, 1, 1e4)),
                         ("tiny", _inputs(64, dim, 2, 1e-8))):
            for mode in ("train", "eval"):
                qq = copy.deepcopy(q).train(mode == "train")
                out = qq(z)
                assert torch.isfinite(out.z_q).all(), f"z_q has NaN/inf on {label} inputs ({mode} mode)"
                assert math.isfinite(float(out.loss.detach())), f"loss is NaN/inf on {label} inputs ({mode} mode)"

    def device_move() -> None:
        if not torch.cuda.is_available():
            raise _Skip("CUDA not available on this machine")
        qq = copy.deepcopy(q).cuda().eval()
        z = _inputs(64, dim, seed + 700)
        with torch.no_grad():
            a = qq(z.cuda())
            b = qq.cpu()(z)
        assert torch.equal(a.indices.cpu(), b.indices), "CPU and CUDA pick different codes"

    check("shapes, dtypes, index range", shapes)
    check("gradient reaches z", gradient)
    check("decode_indices agrees with z_q", decode)
    check("codebook() shape", codebook)
    check("determinism under a seed", determinism)
    check("state_dict round trip", state_dict_round_trip)
    check("eval mode leaves state unchanged", eval_is_pure)
    check("finite on zero/huge/tiny inputs", extremes)
    check("CPU <-> CUDA move", device_move)
    return results


class _Skip(Exception):
    pass


def assert_quantizer_conforms(name: str, **kwargs: Any) -> None:
    """pytest helper: fail with every failing check's message."""
    failures = [r.line() for r in check_quantizer(name, **kwargs) if r.status == "fail"]
    assert not failures, f"{name} breaks the Quantizer contract:\n" + "\n".join(failures)
