"""Mutants of the tensor, the autograd engine and the shape ops (view, cat, expand, permute, reshape, cast, getitem).

Host-side Python: no kernel body, so each runs the same way with the simulator on or off.
See catalogue.py for the fields.
"""

from mutant import m, ms  # noqa: F401

TENSOR_MUTANTS = []
