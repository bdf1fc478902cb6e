"""Every registered method passes the one conformance kit (vqbench.testing)."""

import pytest

from vqbench.registry import METHODS
from vqbench.testing import assert_quantizer_conforms, check_quantizer

BUILTINS = [e.name for e in METHODS.entries() if e.source == "vqbench"]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_method_conforms(name):
    assert_quantizer_conforms(name)


def test_kit_catches_a_broken_quantizer(tmp_path):
    from vqbench.registry import load_plugin

    plugin = tmp_path / "broken_q.py"
    plugin.write_text('''
import torch
from vqbench.registry import register_method
from vqbench.quantizer import QuantizeOutput, Quantizer

@register_method("test-broken-q", family="test", description="breaks the contract")
class Broken(Quantizer):
    def __init__(self, dim, codebook_size):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.codes = torch.nn.Parameter(torch.randn(codebook_size, dim))
    def codebook(self):
        return self.codes
    def forward(self, z):
        idx = torch.zeros(z.shape[:-1], dtype=torch.int32)   # wrong dtype
        return QuantizeOutput(z.detach() * 0, idx, torch.zeros(()), {})  # no gradient, wrong values
''')
    load_plugin(str(plugin))
    try:
        results = {r.name: r for r in check_quantizer("test-broken-q")}
        assert results["shapes, dtypes, index range"].status == "fail"
        assert "torch.long" in results["shapes, dtypes, index range"].message
        assert results["gradient reaches z"].status == "fail"
        assert results["decode_indices agrees with z_q"].status == "fail"
        assert results["metadata"].status == "pass"
    finally:
        METHODS.remove("test-broken-q")
