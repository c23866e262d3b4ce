"""Mutants of the nn modules, the models, the optimisers and the file formats (serialization, interop).

Host-side Python: no kernel body, so each runs the same way with the simulator on or off.
See catalogue.py for the fields.
"""

from mutant import m, ms  # noqa: F401

MODULE_MUTANTS = []
