"""``vqbench new method NAME``: write a ready-to-install plugin package for a new quantizer."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from vqbench.errors import UserError

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "vqbench-{name}"
version = "0.1.0"
description = "The {name} quantizer, a vqbench plugin"
requires-python = ">=3.10"
dependencies = ["vqbench"]

# vqbench finds methods through this entry-point group: importing the module registers "{name}".
[project.entry-points."vqbench.methods"]
{name} = "{module}.method"

[tool.setuptools]
packages = ["{module}"]
'''

METHOD = '''"""{name}: <one line saying what the method does against collapse>.

<Authors>, "<Title>", arXiv:<id>. State the update rule you implement here, e.g.

    k* = argmin_k ||z - c_k||^2,   z_q = z + sg[c_k* - z],
    loss = ||sg[z] - c_k*||^2 + beta ||z - sg[c_k*]||^2

The skeleton below is plain VQ-VAE (arXiv:1711.00937) so that it runs and passes the conformance
kit as it is: change the marked places to your method's math, keep the shapes. It uses only
vqbench's public API (``register_method``, ``Quantizer``, ``QuantizeOutput``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vqbench import QuantizeOutput, Quantizer, register_method


@register_method("{name}", version=1, paper=None, family="{family}",
                 description="<what it does, one line>", beta=0.25)
class {cls}(Quantizer):
    """Input ``z`` is channel-last ``(..., dim)``; every piece of state lives in parameters/buffers."""

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25) -> None:
        super().__init__()
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        # YOUR METHOD: how the codebook is parameterised and initialised
        self.codes = nn.Parameter(torch.randn(codebook_size, dim) * 0.02)

    def codebook(self) -> Tensor:
        """The effective codes in z-space, (codebook_size, dim)."""
        return self.codes

    def forward(self, z: Tensor) -> QuantizeOutput:
        # the search and the losses in float32: on a GPU the runner trains under bf16 autocast
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            # YOUR METHOD: the assignment rule
            indices = nearest_code(flat, self.codebook())
            codes = self.codebook()[indices]
            # YOUR METHOD: the auxiliary loss, already weighted
            loss = F.mse_loss(codes, flat.detach()) + self.beta * F.mse_loss(flat, codes.detach())
            # YOUR METHOD: the gradient path from z_q to z (straight-through here: value codes, gradient identity)
            z_q = (flat + (codes - flat).detach()).reshape(z.shape).to(z.dtype)
        return QuantizeOutput(z_q, indices.reshape(z.shape[:-1]), loss, {{}})

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before each optimizer step: schedules, restarts, deferred switches go here."""


@torch.no_grad()
def nearest_code(x: Tensor, codes: Tensor, rows: int = 4096) -> Tensor:
    """Index of the nearest code (squared L2) for each row of ``x`` (N, dim), ``rows`` rows at a time.

    ``argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 x.c_k)``: memory ``rows x K``, never the full N x K matrix.
    """
    norms = codes.pow(2).sum(dim=1)
    return torch.cat([(norms - 2 * block @ codes.t()).argmin(dim=1) for block in x.split(rows)])
'''

TEST = '''from vqbench.testing import assert_quantizer_conforms


def test_{module}_conforms_to_the_quantizer_contract():
    assert_quantizer_conforms("{name}")
'''

README = '''# vqbench-{name}

A vqbench plugin. Install it next to vqbench and it is a method like the built-ins:

    pip install -e .
    vqbench list methods {name}
    vqbench check method {name}
    vqbench run --task gmm --method {name}
    pytest tests
'''


def scaffold_method(name: str, directory: str | Path | None = None, family: str = "vq") -> Path:
    """Write the plugin package for method ``name`` into ``directory`` (default ``./vqbench-<name>``)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise UserError(f"method name {name!r}: use lowercase letters, digits and '-', starting with a letter")
    module = "vqbench_" + name.replace("-", "_")
    if keyword.iskeyword(module):
        raise UserError(f"method name {name!r} gives an invalid module name")
    cls = "".join(part.capitalize() for part in name.split("-")) + "Quantizer"
    root = Path(directory) if directory else Path(f"vqbench-{name}")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty: choose another --dir")
    values = {"name": name, "module": module, "cls": cls, "family": family}
    files = {
        root / "pyproject.toml": PYPROJECT.format(**values),
        root / "README.md": README.format(**values),
        root / module / "__init__.py": f'"""vqbench plugin: the {name} quantizer."""\n',
        root / module / "method.py": METHOD.format(**values),
        root / "tests" / f"test_{module}.py": TEST.format(**values),
    }
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the plugin into {root}: {exc.strerror}") from None
    return root
