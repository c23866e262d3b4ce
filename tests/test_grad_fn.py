"""Graph introspection: ``t.grad_fn``, ``node.name()``, ``node.next_functions``, ``repr(node)``.

The structure of ``next_functions`` is compared with PyTorch's on expressions where the two
graphs have the same shape; the documented differences (docs/api.md) are tested on their own.
"""

import re

import numpy as np
import pytest

import minicbam as mc
from minicbam.function import AccumulateGrad

# PyTorch names that differ from minicbam's beyond the numeric suffix
TORCH_ALIASES = {
    "torch::autograd::accumulategrad": "accumulategrad",
    "mmbackward": "matmulbackward",
    "viewbackward": "reshapebackward",
}


def _normal_name(node):
    name = re.sub(r"\d+$", "", node.name()).lower()
    return TORCH_ALIASES.get(name, name)


def structure(node):
    """(name, children) of the graph below ``node``; None where no gradient flows."""
    if node is None:
        return None
    return _normal_name(node), tuple(structure(child) for child, _ in node.next_functions)


EXPRESSIONS = {
    "add of mul": (lambda a, b: (a * b + a).sum(), [(2, 3), (2, 3)], [True, True]),
    "no-grad input": (lambda a, c: (a * c).sum(), [(2, 3), (2, 3)], [True, False]),
    "matmul relu": (lambda x, w: (x @ w).relu().sum(), [(2, 3), (3, 4)], [True, True]),
    "unary chain": (lambda x, w: (x - w).abs().log().sum(1), [(2, 3), (2, 3)], [True, True]),
    "reshape permute": (lambda x: x.reshape(3, 2).permute(1, 0).sum(), [(2, 3)], [True]),
}


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_next_functions_match_pytorch(name):
    torch = pytest.importorskip("torch")
    fn, shapes, grads = EXPRESSIONS[name]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) + 3.0 for s in shapes]
    ours = fn(*(mc.tensor(a, requires_grad=g) for a, g in zip(arrays, grads)))
    theirs = fn(*(torch.tensor(a, requires_grad=g) for a, g in zip(arrays, grads)))
    assert structure(ours.grad_fn) == structure(theirs.grad_fn)


def test_leaves_have_no_grad_fn_and_one_accumulator_each():
    a = mc.randn(2, 3, requires_grad=True)
    b = mc.randn(2, 3, requires_grad=True)
    assert a.grad_fn is None and mc.randn(2).grad_fn is None
    y = a * b + a
    (mul, _), (acc_a, index) = y.grad_fn.next_functions
    assert index == 0
    assert isinstance(acc_a, AccumulateGrad) and acc_a.variable is a
    assert mul.next_functions[0][0] is acc_a  # one node per leaf, as in PyTorch
    assert mul.next_functions[1][0].variable is b
    assert acc_a.next_functions == () and acc_a.name() == "AccumulateGrad"


def test_no_grad_results_and_constants_have_no_node():
    a = mc.randn(3, requires_grad=True)
    with mc.no_grad():
        c = a * 2.0
    assert c.grad_fn is None
    y = a * c
    assert y.grad_fn.next_functions[1] == (None, 0)


def test_repr_names_the_op_and_its_shapes():
    a = mc.randn(2, 3, requires_grad=True)
    w = mc.randn(3, 4, requires_grad=True)
    y = a @ w
    assert y.grad_fn.name() == "MatMulBackward"
    assert repr(y.grad_fn) == "<MatMulBackward: (2, 3), (3, 4) -> (2, 4)>"
    assert repr(y.grad_fn.next_functions[1][0]) == "<AccumulateGrad: (3, 4)>"


def test_scalar_ops_have_one_edge_and_broadcasts_an_expand_node():
    # documented differences from PyTorch: a Python number is no graph input, and
    # broadcasting is its own op (ExpandBackward)
    a = mc.randn(2, 3, requires_grad=True)
    b = mc.randn(3, requires_grad=True)
    assert (a * 2.0).grad_fn.name() == "MulBackward"
    assert len((a * 2.0).grad_fn.next_functions) == 1
    assert (2.0 / a).grad_fn.name() == "RdivBackward"
    expand = (a * b).grad_fn.next_functions[1][0]
    assert repr(expand) == "<ExpandBackward: (3,) -> (2, 3)>"
    assert expand.next_functions[0][0].variable is b


def test_graph_survives_backward():
    a = mc.randn(2, 3, requires_grad=True)
    y = (a * 3.0).sum()
    before = (repr(y.grad_fn), structure(y.grad_fn))
    y.backward()  # releases the saved arrays, keeps the edges and what repr shows
    assert (repr(y.grad_fn), structure(y.grad_fn)) == before
    assert y.grad_fn.next_functions[0][0].name() == "MulBackward"
