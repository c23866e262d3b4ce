"""``import minicbam as mc`` makes the subpackages reachable as attributes, lazily."""

import importlib.util
import json
import subprocess
import sys

import pytest

import minicbam as mc

PRESENT = [n for n in mc.LAZY_SUBMODULES if importlib.util.find_spec(f"minicbam.{n}")]


def test_the_documented_subpackages_exist():
    assert {"nn", "optim", "models", "data", "interop", "viz"} <= set(PRESENT)


@pytest.mark.parametrize("name", PRESENT)
def test_subpackage_is_an_attribute(name):
    module = getattr(mc, name)
    assert module is sys.modules[f"minicbam.{name}"]
    assert name in dir(mc)


def test_attributes_resolve_in_a_fresh_process_without_importing_eagerly():
    code = (
        "import json, sys, minicbam as mc\n"
        f"names = {PRESENT!r}\n"
        "eager = [n for n in names if 'minicbam.' + n in sys.modules]\n"
        "found = [getattr(mc, n).__name__ for n in names]\n"
        "print(json.dumps([eager, found, mc.nn.Linear.__name__, mc.optim.SGD.__name__]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    eager, found, linear, sgd = json.loads(run.stdout)
    assert "nn" not in eager and "optim" not in eager  # imported on first access only
    assert found == [f"minicbam.{n}" for n in PRESENT]
    assert (linear, sgd) == ("Linear", "SGD")


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        mc.no_such_thing
    if "distributed" not in PRESENT:
        with pytest.raises(AttributeError, match="'distributed'"):
            mc.distributed
