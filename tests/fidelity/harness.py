"""The fidelity harness: drive two quantizer implementations through the same few optimizer steps and compare.

Both sides get a copy of one linear encoder, the same input batches and targets, and plain SGD (one learning rate
per parameter group). Each step: ``before_step(step)``, the global RNG reseeded (so random draws inside the
quantizers line up when both draw the same way), gradients cleared, ``z = encoder(x)``, ``(z_q, indices, loss) =
forward(z)``, ``mse(z_q, target) + loss`` backward, optimizer step; then the indices, the loss, ``z_q`` and the
effective codebook after the step are recorded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Forward = Callable[[Tensor], tuple[Tensor, ...]]


@dataclass
class Side:
    """One implementation: ``forward(z (N, dim)) -> (z_q, indices, aux loss[, reported loss])``, its effective
    ``codebook()``
    (``None`` when there is none to compare), the optimizer parameter groups besides the encoder, and an optional
    hook run before each step's forward (schedules). The optional 4th output is the loss to record when it differs
    from the one trained on (a reference whose loss weights are mapped onto ours)."""

    forward: Forward
    codebook: Callable[[], Tensor | None]
    param_groups: list[dict]
    before_step: Callable[[int], None] | None = None


@dataclass
class Trace:
    """What one side produced, per step."""

    indices: list[Tensor] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)
    z_q: list[Tensor] = field(default_factory=list)
    codebooks: list[Tensor | None] = field(default_factory=list)


@dataclass(frozen=True)
class Tolerance:
    """Largest allowed differences of the loss (after the stated mapping) and of the codebook / z_q entries:
    absolute for values up to 1 in magnitude, relative to the reference's magnitude above (``|d| <= tol * max(1,
    |ref|)``, the codebook / z_q scale being their largest entry)."""

    loss: float
    codebook: float


@dataclass
class Problem:
    """Inputs (steps, N, in_dim), targets (steps, N, dim) and the encoder both sides start from."""

    inputs: Tensor
    targets: Tensor
    encoder: nn.Linear

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]


def make_problem(steps: int, n: int, in_dim: int, dim: int, seed: int = 0, modes: int = 12,
                 spread: float = 2.0) -> Problem:
    """GMM inputs (so that several codes are in use), random targets, a seeded linear encoder."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(modes, in_dim, generator=g) * spread
    picks = torch.randint(modes, (steps, n), generator=g)
    inputs = centres[picks] + 0.3 * torch.randn(steps, n, in_dim, generator=g)
    targets = torch.randn(steps, n, dim, generator=g)
    encoder = nn.Linear(in_dim, dim)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(dim, in_dim, generator=g) / in_dim ** 0.5)
        encoder.bias.copy_(0.1 * torch.randn(dim, generator=g))
    return Problem(inputs, targets, encoder)


def run_steps(side: Side, problem: Problem, lr: float, seed: int = 0) -> Trace:
    """Train ``side`` (with its own copy of the encoder) for ``problem.steps`` SGD steps; record each step."""
    encoder = copy.deepcopy(problem.encoder)
    groups = [{"params": list(encoder.parameters())}] + [g for g in side.param_groups if list(g["params"])]
    optimizer = torch.optim.SGD(groups, lr=lr)
    trace = Trace()
    for step in range(problem.steps):
        if side.before_step is not None:
            side.before_step(step)
        torch.manual_seed(seed * 1000 + step)
        optimizer.zero_grad(set_to_none=True)  # before the forward: vqtorch's in-place step backpropagates inside it
        z = encoder(problem.inputs[step])
        z_q, indices, loss, *reported = side.forward(z)
        total = F.mse_loss(z_q, problem.targets[step]) + loss
        total.backward()
        optimizer.step()
        with torch.no_grad():
            codes = side.codebook()
        trace.indices.append(indices.detach().reshape(-1).clone())
        trace.losses.append((reported[0] if reported else loss).detach().clone())
        trace.z_q.append(z_q.detach().clone())
        trace.codebooks.append(None if codes is None else codes.detach().clone())
    return trace


@dataclass
class Measured:
    """Largest scaled differences over all steps (what the fidelity table reports; see ``Tolerance``)."""

    loss: float
    codebook: float
    z_q: float
    steps: int


MEASURED: dict[str, Measured] = {}


def compare(name: str, ours: Trace, ref: Trace, tol: Tolerance,
            loss_map: Callable[[Tensor], Tensor] = lambda loss: loss) -> Measured:
    """Indices equal at every step; ``|loss - loss_map(ref loss)|``, codebook and z_q within ``tol``.

    Also asserts that the codebook (or z_q) actually changed over the run, so the comparison exercised an update.
    Records the largest differences in ``MEASURED[name]`` and prints them (``pytest -s``).
    """
    loss_diff = cb_diff = zq_diff = 0.0
    for step, (i_o, i_r) in enumerate(zip(ours.indices, ref.indices)):
        assert torch.equal(i_o, i_r.reshape(-1).long()), \
            f"{name}: step {step}: indices differ at {int((i_o != i_r.reshape(-1)).sum())} of {i_o.numel()} rows"
        ref_loss = loss_map(ref.losses[step])
        loss_diff = max(loss_diff, _scaled(ours.losses[step] - ref_loss, ref_loss))
        zq_diff = max(zq_diff, _scaled(ours.z_q[step] - ref.z_q[step].reshape(ours.z_q[step].shape), ref.z_q[step]))
        if ours.codebooks[step] is not None and ref.codebooks[step] is not None:
            cb_diff = max(cb_diff, _scaled(ours.codebooks[step] - ref.codebooks[step], ref.codebooks[step]))
    measured = Measured(loss_diff, cb_diff, zq_diff, len(ours.indices))
    MEASURED[name] = measured
    print(f"FIDELITY {name}: steps={measured.steps} dloss={loss_diff:.3g} dcodebook={cb_diff:.3g} "
          f"dz_q={zq_diff:.3g} (scaled differences; tolerance loss {tol.loss:g}, codebook {tol.codebook:g})")
    assert loss_diff <= tol.loss, f"{name}: loss differs by {loss_diff:.3g} > {tol.loss:g}"
    assert cb_diff <= tol.codebook, f"{name}: codebook differs by {cb_diff:.3g} > {tol.codebook:g}"
    assert zq_diff <= tol.codebook, f"{name}: z_q differs by {zq_diff:.3g} > {tol.codebook:g}"
    first, last = ours.codebooks[0], ours.codebooks[-1]
    moved = first is not None and not torch.equal(first, last)
    assert moved or not torch.equal(ours.z_q[0], ours.z_q[-1]), f"{name}: nothing changed over the run"
    return measured


def _scaled(difference: Tensor, reference: Tensor) -> float:
    """``max|difference| / max(1, max|reference|)``: absolute below 1, relative above."""
    return float(difference.abs().max()) / max(1.0, float(reference.abs().max()))


def ours_side(module: nn.Module, before_step: Callable[[int], None] | None = None) -> Side:
    """A registered vqbench method as a harness side (public API: forward, codebook, parameters, on_step)."""
    module.train()

    def forward(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = module(z)
        return out.z_q, out.indices, out.loss

    return Side(forward, module.codebook, [{"params": [p for p in module.parameters() if p.requires_grad]}],
                before_step)


def load_state(module: nn.Module, **tensors: Tensor) -> None:
    """Overwrite named entries of ``module``'s state dict (the checkpoint format) and load it back."""
    state = module.state_dict()
    for key, value in tensors.items():
        assert key in state, f"{type(module).__name__} has no state entry {key!r} (renamed?)"
        state[key] = value.clone()
    module.load_state_dict(state)


def start_codes(problem: Problem, k: int, far: int = 0) -> Tensor:
    """Codes near the first batch's latents (several in use), the last ``far`` of them far away (dead)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        z = problem.encoder(problem.inputs[0])
    codes = z[torch.randperm(z.shape[0], generator=g)[:k]] + 0.1 * torch.randn(k, z.shape[1], generator=g)
    if far:  # far along different directions, so no two of them share a nearest (or most similar) batch vector
        codes[-far:] += 20.0 * torch.nn.functional.normalize(torch.randn(far, z.shape[1], generator=g), dim=1)
    return codes
