"""Minimal transcriptions of the authors' quantizer update rules, kept apart from vqbench's implementations.

Each module cites the repository, file and commit it transcribes; the fidelity tests (``tests/test_fidelity_*.py``)
drive one of these and the registered method from the same initial state with the same inputs and compare them.
``harness`` holds the shared training loop and comparison.
"""
