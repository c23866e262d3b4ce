"""The backward sweep's bookkeeping: visiting order, gradient sums that fan in, and the
cheap CPU paths of small kernels.

The sweep adds a gradient that fans in from several consumers *in place* into an array it
made itself (never into one that backward handed to several inputs, or that the user
holds), and a topological order with one push per node must list nodes exactly as the
recursive depth-first search did, so that fanned-in gradients are summed in the same
order. Small inputs take the serial twin of a parallel kernel: same results, bit for bit.
"""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import minicbam as mc
from minicbam import device
from minicbam.function import _topological_order
from minicbam.kernels.elementwise import (
    apply_binary,
    apply_binary_grads,
    apply_binary_inplace,
    zero_one,
)
from minicbam.kernels.strided import broadcast_array, gather_kernel
from minicbam.ops.binary import add_kernel, div_kernel, mul_grads_kernel, mul_kernel, sub_kernel
from minicbam.ops.reduce import sum_columns_kernel, sum_rows_kernel

THRESHOLD = add_kernel.parallel_from  # the size where the elementwise kernels go parallel
DTYPES = st.sampled_from([np.float32, np.float64])


def _leaf(values, dtype=np.float64):
    return mc.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# ----------------------------------------------------------------------------- fan-in sums
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), dtype=DTYPES)
def test_fanned_in_gradients_of_shared_arrays_stay_separate(shape, dtype):
    """Add hands one gy to both inputs: summing more gradients into one of them must not
    change the other (each sum is exact here: small integers)."""
    x = _leaf(np.full(shape, 2.0), dtype)
    p, q = x * 1.0, x * 1.0  # two non-leaves that receive the same gy from p + q
    s = p + q
    out = s + p * 3.0 + p + q * 5.0  # p: 1 + 3 + 1, q: 1 + 5
    out.backward(mc.ones(shape, dtype=dtype))
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad.numpy(), np.full(shape, 11.0, dtype))


def test_leaf_gradient_sums_do_not_touch_the_array_handed_to_another_leaf():
    a, b = _leaf([1.0, 2.0]), _leaf([3.0, 4.0])
    y = a + b  # a and b first receive the same gy array
    (y + a + a).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 3.0])
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])


def test_a_held_gradient_is_not_changed_by_the_next_backward():
    a = _leaf([1.0, 2.0, 3.0])
    (a * 2.0 + a).sum().backward()
    held = a.grad
    values = held.numpy()
    (a * 4.0 + a + a).sum().backward()  # three contributions in the second sweep
    np.testing.assert_array_equal(held.numpy(), values)  # the old tensor is untouched
    np.testing.assert_array_equal(a.grad.numpy(), values + 6.0)
    assert a.grad is not held


def test_a_gradient_passed_by_the_user_is_not_changed():
    a = _leaf([1.0, 2.0])
    g = mc.tensor(np.array([5.0, 7.0]))
    (a + a).backward(g)  # both of Add's input gradients are g's array
    np.testing.assert_array_equal(g.numpy(), [5.0, 7.0])
    np.testing.assert_array_equal(a.grad.numpy(), [10.0, 14.0])


def test_a_hook_that_replaces_grad_is_respected_by_later_sweeps():
    w = _leaf([1.0, 1.0])
    w.register_post_accumulate_grad_hook(lambda t: setattr(t, "grad", t.grad * 10.0))
    (w + w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [20.0, 20.0])
    (w + w + w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [230.0, 230.0])


@given(
    n=st.integers(2, 6),
    edges=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=12),
    dtype=DTYPES,
)
def test_fanned_in_sums_match_float_order_of_a_plain_sum(n, edges, dtype):
    """Random DAGs of adds and scaled adds: every gradient equals the one found by summing
    each node's incoming gradients in the sweep's order (here: values exact in binary
    floating point, so any correct order gives the same bits)."""
    x = _leaf(np.arange(1.0, 4.0), dtype)
    nodes = [x * 1.0 for _ in range(n)]
    for i, j in edges:
        nodes.append(nodes[i % len(nodes)] + nodes[j % len(nodes)] * 0.5)
    loss = nodes[-1].sum()
    # the expected gradient: forward-mode count of paths, each weighted by 0.5 per scaling
    weight = [1.0] * n
    for i, j in edges:
        k = len(weight)
        weight.append(weight[i % k] + 0.5 * weight[j % k])
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(3, weight[-1], dtype))


# ----------------------------------------------------------------------------- which inputs
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("grad_of", [0, 1])
def test_a_binary_op_records_which_input_requires_grad(op, grad_of):
    """Function.__call__ spells out the two-input case: each input's flag is its own."""
    values = [np.array([1.0, -2.0]), np.array([3.0, 4.0])]
    a, b = (mc.tensor(v, requires_grad=k == grad_of) for k, v in enumerate(values))
    y = getattr(mc.ops, op)(a, b)
    assert y.requires_grad
    assert y.grad_fn.needs_input_grad == (grad_of == 0, grad_of == 1)
    y.sum().backward()
    x, other = values[grad_of], values[1 - grad_of]
    expected = {
        ("add", 0): np.ones(2),
        ("add", 1): np.ones(2),
        ("sub", 0): np.ones(2),
        ("sub", 1): -np.ones(2),
        ("mul", 0): other,
        ("mul", 1): other,
        ("div", 0): 1 / other,
        ("div", 1): -other / x**2,
    }[op, grad_of]
    np.testing.assert_allclose((a, b)[grad_of].grad.numpy(), expected, rtol=1e-12)
    assert (a, b)[1 - grad_of].grad is None


# ----------------------------------------------------------------------------- visiting order
def _recursive_order(root):
    """The order of the original recursive search: inputs entered last to first."""
    order, seen = [], set()

    def visit(fn):
        seen.add(id(fn))
        for t in reversed(fn.inputs):
            if t.creator is not None and id(t.creator) not in seen:
                visit(t.creator)
        order.append(fn)

    visit(root.creator)
    return order[::-1]


@given(
    ops=st.lists(
        st.tuples(st.sampled_from("+*-r"), st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=25,
    )
)
@example(ops=[("*", 0, 1), ("-", 0, 1), ("+", 2, 3)])  # two independent branches
def test_topological_order_is_the_recursive_search_order(ops):
    a, b = _leaf([1.0, 2.0]), _leaf([3.0, 4.0])
    values = [a, b]
    for op, i, j in ops:
        u, v = values[i % len(values)], values[j % len(values)]
        values.append({"+": u + v, "*": u * v, "-": u - v, "r": u.relu()}[op])
    loss = values[-1].sum()
    order = _topological_order(loss)
    assert [id(fn) for fn in order] == [id(fn) for fn in _recursive_order(loss)]
    assert len({id(fn) for fn in order}) == len(order)  # each node once


def test_topological_order_of_a_deep_chain_needs_no_recursion():
    x = _leaf([1.0])
    y = x
    for _ in range(5000):  # deeper than Python's default recursion limit
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0])


# ----------------------------------------------------------------------------- small kernels
def _sizes_around_threshold():
    return st.integers(1, 64) | st.integers(THRESHOLD - 3, THRESHOLD + 3)


def _values(rng, n, dtype):
    v = rng.standard_normal(n).astype(dtype)
    v[:: max(1, n // 5)] = 0.0  # zeros: x / 0 gives inf or nan, as in IEEE
    return v


@pytest.mark.parametrize("kernel", [add_kernel, sub_kernel, mul_kernel, div_kernel])
@given(n=_sizes_around_threshold(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_elementwise_paths_agree_with_numpy_bit_for_bit(kernel, n, dtype, seed):
    rng = np.random.default_rng(seed)
    x, y = _values(rng, n, dtype), _values(rng, n, dtype)
    expected = {add_kernel: np.add, sub_kernel: np.subtract, mul_kernel: np.multiply}.get(
        kernel, np.divide
    )
    with np.errstate(all="ignore"):
        want = expected(x, y)
    got = apply_binary(kernel, x, y)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    inplace = x.copy()
    assert apply_binary_inplace(kernel, inplace, y) is inplace
    np.testing.assert_array_equal(inplace, want)


@given(n=_sizes_around_threshold(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_mul_backward_kernel_gives_both_products_bit_for_bit(n, dtype, seed):
    """Mul's backward computes gy * b and gy * a in one pass; on both sides of the size
    where it goes parallel each equals NumPy's product."""
    rng = np.random.default_rng(seed)
    gy, a, b = (_values(rng, n, dtype) for _ in range(3))
    ga, gb = apply_binary_grads(mul_grads_kernel, gy, a, b)
    assert ga.dtype == gb.dtype == dtype and ga is not gb
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ga, gy * b)
        np.testing.assert_array_equal(gb, gy * a)


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    which=st.lists(st.booleans(), min_size=3, max_size=3),
    dtype=DTYPES,
)
def test_broadcast_binary_ops_match_numpy(shape, which, dtype):
    other = tuple(1 if keep else s for s, keep in zip(shape, which))
    rng = np.random.default_rng(len(shape))
    a, b = rng.standard_normal(shape).astype(dtype), rng.standard_normal(other).astype(dtype)
    ta, tb = mc.tensor(a), mc.tensor(b)
    for got, want in ((ta + tb, a + b), (ta * tb, a * b), (tb - ta, b - a)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(broadcast_array(b, shape), np.broadcast_to(b, shape))


def test_scalars_keep_the_dtype_and_the_sign_of_zero():
    assert zero_one(np.dtype(np.float32)) == (0, 1)
    assert all(type(v) is np.float32 for v in zero_one(np.dtype(np.float32)))
    x = mc.tensor(np.array([-0.0, 1.5], np.float32))
    y = x - 0.0  # x + (-0.0) keeps -0.0; x + 0.0 would not
    assert y.dtype == np.float32
    assert np.signbit(y.numpy()[0])
    assert (x * 3.0).dtype == np.float32 and (x.sigmoid()).dtype == np.float32


def _run_both(kernel, out, *args):
    """(result of the parallel njit function, result of its serial twin: small inputs)."""
    parallel, small = out.copy(), out.copy()
    kernel.cpu(parallel, *args)
    _twin(kernel)(small, *args)
    return parallel, small


_TWINS = {}


def _twin(kernel):
    if kernel.name not in _TWINS:
        _TWINS[kernel.name] = device.serial_twin(kernel.cpu)
    return _TWINS[kernel.name]


@given(rows=st.integers(1, 9), k=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_sum_twins_match_the_parallel_kernels(rows, k, seed):
    x = np.random.default_rng(seed).standard_normal(rows * k).astype(np.float32)
    zero = np.float64(0)
    parallel, small = _run_both(sum_rows_kernel, np.zeros(rows, np.float32), x, k, zero)
    np.testing.assert_array_equal(parallel, small)
    parallel, small = _run_both(sum_columns_kernel, np.zeros(k, np.float32), x, rows, zero)
    np.testing.assert_array_equal(parallel, small)


def test_gather_twin_matches_the_parallel_kernel():
    src = np.arange(24.0)
    shape, strides = (1, 1, 1, 2, 3, 4), (0, 0, 0, 1, 8, 2)  # a permuted view
    parallel, small = _run_both(gather_kernel, np.zeros(24), src, 0, shape, strides)
    np.testing.assert_array_equal(parallel, small)
    np.testing.assert_array_equal(small, src.reshape(3, 4, 2).transpose(2, 0, 1).ravel())
