"""``Tensor``: an array (NumPy on the CPU, numba device array on CUDA) plus autograd state.

Invariant: ``tensor.data`` is always C-contiguous. Views are gathers into new arrays, so
kernels only ever see flat, contiguous buffers.

A tensor made by an op records the op (a ``Function``) as ``creator``; a tensor made by
the user is a *leaf* and receives ``.grad`` from ``backward`` when ``requires_grad``.
"""

import numpy as np

from minicbam import device
from minicbam.dtypes import (  # noqa: F401  (re-exported: mc.float32, ...)
    bool_,
    check_dtype,
    float32,
    float64,
    int8,
    int16,
    int32,
    int64,
    uint8,
)
from minicbam.function import run_backward, run_final_callbacks

_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed minicbam's generator (used by randn, rand, initialisation and dropout)."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator():
    return _rng


class Tensor:
    __array_priority__ = 1000  # make ``ndarray op Tensor`` defer to Tensor's reflected op
    # In-place modifications (inplace.py): how many (``_version``, as PyTorch's) and the
    # global stamp of the last one, which backward compares with each op's own stamp.
    _version = 0
    _stamp = 0
    _base = None  # the tensor whose array this one's views (detach, reshape), if any
    _post_accumulate_hooks = ()  # a list once a hook is registered (see function.py)

    def __init__(self, data, requires_grad=False):
        self.data = data
        self.grad = None
        self.creator = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        return tuple(self.data.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def ndim(self):
        return len(self.data.shape)

    def dim(self):
        return self.ndim

    def numel(self):
        return int(self.data.size)

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    @property
    def device(self):
        return device.device_of(self.data)

    @property
    def is_leaf(self):
        return self.creator is None

    @property
    def grad_fn(self):
        """The graph node (a Function) that made this tensor; None for leaves."""
        return self.creator

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    # ------------------------------------------------------------------ Python protocols
    def __bool__(self):
        n = self.numel()
        if n != 1:
            what = "no values" if n == 0 else "more than one value"
            raise RuntimeError(f"Boolean value of Tensor with {what} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self._scalar("float"))

    def __int__(self):
        return int(self._scalar("int"))

    def __index__(self):
        if self.numel() != 1 or self.dtype.kind not in "iu":
            raise TypeError(
                f"only integer tensors of a single element can be converted to an index, "
                f"got dtype {self.dtype} and shape {self.shape}"
            )
        return int(self.item())

    def _scalar(self, what):
        if self.numel() != 1:
            raise ValueError(
                f"{what}(): only one element tensors can be converted to Python scalars, "
                f"got shape {self.shape}"
            )
        return self.item()

    def __format__(self, spec):
        if self.ndim == 0:
            return format(self.item(), spec)  # f"{loss:.4f}", as PyTorch formats 0-d tensors
        return object.__format__(self, spec)

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(t)``: a host copy of the values (never the autograd state)."""
        host = self.numpy()
        return host if dtype is None else host.astype(dtype, copy=False)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else ", device='cuda'"
        return f"tensor({np.array2string(self.numpy(), separator=', ')}{dev}{grad})"

    # ------------------------------------------------------------------ autograd
    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind != "f":  # not a floating-point dtype
            raise RuntimeError(
                f"requires_grad_: only floating-point tensors can require gradients, "
                f"got dtype {self.dtype}"
            )
        if not self.is_leaf and not requires_grad:
            raise RuntimeError("requires_grad_: you can only change requires_grad of leaf tensors")
        self.requires_grad = bool(requires_grad)
        return self

    def detach(self):
        d = Tensor(self.data)
        d._base = self  # one array: in-place changes of d are changes of self
        return d

    def backward(self, gradient=None, retain_graph=False):
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require grad and has no grad_fn "
                "(no input of the computation had requires_grad=True, or it ran under no_grad)"
            )
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError(
                    f"backward: grad can be implicitly created only for scalar outputs, "
                    f"got shape {self.shape}; pass gradient="
                )
            gy = device.full(self.shape, 1, self.dtype, self.device)
        else:
            gy = _gradient_array(gradient, self)
        if self.creator is None:
            self.accumulate_grad(gy)
            self.run_post_accumulate_hooks()
            run_final_callbacks()
            return
        run_backward(self, gy, retain_graph)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` in every backward sweep, once this leaf's ``.grad`` is final."""
        if not self.is_leaf:
            raise RuntimeError(
                "register_post_accumulate_grad_hook: only leaf tensors accumulate gradients"
            )
        if not self._post_accumulate_hooks:
            self._post_accumulate_hooks = []
        self._post_accumulate_hooks.append(hook)
        return hook

    def run_post_accumulate_hooks(self):
        for hook in self._post_accumulate_hooks:
            hook(self)

    def accumulate_grad(self, g, owned=False):
        if self.grad is None:
            # A copy: backward may hand the same array to several inputs (add's gy), unless
            # the caller says that nothing else holds g (``owned``).
            self.grad = Tensor(g if owned else device.copy(g))
        else:
            self.grad = Tensor(_ops().binary.add_arrays(self.grad.data, g))

    # ------------------------------------------------------------------ conversion
    def numpy(self):
        """A host copy of the data, as ``tensor.detach().cpu().numpy()`` in PyTorch."""
        return device.to_host(self.data)

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item: only one-element tensors can be converted, got {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, target):
        """``to('cpu'|'cuda')`` or ``to(dtype)``; differentiable."""
        from minicbam.ops.cast import cast
        from minicbam.ops.move import move

        if isinstance(target, str):
            return move(self, device.normalize_device(target))
        return cast(self, check_dtype("to", target))

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def double(self):
        return self.to(float64)

    def float(self):
        return self.to(float32)

    def long(self):
        return self.to(int64)

    def type(self, dtype):
        return self.to(dtype)

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __truediv__(self, other):
        return _ops().div(self, other)

    def __rtruediv__(self, other):
        return _ops().div(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __abs__(self):
        return _ops().abs(self)

    def __pow__(self, exponent):
        return _ops().pow(self, exponent)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __eq__(self, other):
        return _ops().compare("eq", self, other)

    def __ne__(self, other):
        return _ops().compare("ne", self, other)

    def __lt__(self, other):
        return _ops().compare("lt", self, other)

    def __le__(self, other):
        return _ops().compare("le", self, other)

    def __gt__(self, other):
        return _ops().compare("gt", self, other)

    def __ge__(self, other):
        return _ops().compare("ge", self, other)

    # In-place ops (minicbam/inplace.py); augmented assignment returns the same tensor.
    def add_(self, other, alpha=1):
        return _inplace().add_(self, other, alpha)

    def sub_(self, other, alpha=1):
        return _inplace().sub_(self, other, alpha)

    def mul_(self, other):
        return _inplace().mul_(self, other)

    def div_(self, other):
        return _inplace().div_(self, other)

    def clamp_(self, min=None, max=None):
        return _inplace().clamp_(self, min, max)

    def fill_(self, value):
        return _inplace().fill_(self, value)

    def zero_(self):
        return _inplace().zero_(self)

    def copy_(self, src):
        return _inplace().copy_(self, src)

    def __iadd__(self, other):
        return _inplace().add_(self, other)

    def __isub__(self, other):
        return _inplace().sub_(self, other)

    def __imul__(self, other):
        return _inplace().mul_(self, other)

    def __itruediv__(self, other):
        return _inplace().div_(self, other)

    __hash__ = object.__hash__  # tensors are used as dict keys by identity, as in PyTorch

    def __getitem__(self, index):
        return _ops().getitem(self, index)

    # ------------------------------------------------------------------ methods
    def exp(self):
        return _ops().exp(self)

    def log(self):
        return _ops().log(self)

    def sqrt(self):
        return _ops().sqrt(self)

    def abs(self):
        return _ops().abs(self)

    def relu(self):
        return _ops().relu(self)

    def sigmoid(self):
        return _ops().sigmoid(self)

    def tanh(self):
        return _ops().tanh(self)

    def clamp(self, min=None, max=None):
        return _ops().clamp(self, min, max)

    def pow(self, exponent):
        return _ops().pow(self, exponent)

    def sum(self, dim=None, keepdim=False):
        return _ops().sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        return _ops().mean(self, dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        return _ops().amax(self, dim, keepdim)

    def max(self, dim=None, keepdim=False):
        return _ops().max(self, dim, keepdim)

    def var(self, dim=None, unbiased=True, keepdim=False, correction=None):
        return _ops().var(self, dim, unbiased, keepdim, correction)

    def reshape(self, *shape):
        return _ops().reshape(self, *shape)

    def view(self, *shape):
        return _ops().reshape(self, *shape)

    def flatten(self, start_dim=0, end_dim=-1):
        return _ops().flatten(self, start_dim, end_dim)

    def permute(self, *dims):
        return _ops().permute(self, *dims)

    def transpose(self, dim0, dim1):
        return _ops().transpose(self, dim0, dim1)

    @property
    def T(self):
        return _ops().permute(self, *reversed(range(self.ndim)))

    def unsqueeze(self, dim):
        return _ops().unsqueeze(self, dim)

    def squeeze(self, dim=None):
        return _ops().squeeze(self, dim)

    def expand(self, *shape):
        return _ops().expand(self, *shape)

    def expand_as(self, other):
        return _ops().expand(self, other.shape)

    def contiguous(self):
        return self

    def argmax(self, dim=None, keepdim=False):
        return _ops().argmax(self, dim, keepdim)


def _ops():
    # The ops import this module (to build tensors), so they are reached through a function;
    # the module is kept after the first call (an import statement costs ~1 us per op).
    global _ops_module
    if _ops_module is None:
        from minicbam import ops

        _ops_module = ops
    return _ops_module


def _inplace():
    global _inplace_module
    if _inplace_module is None:
        from minicbam import inplace

        _inplace_module = inplace
    return _inplace_module


_ops_module = _inplace_module = None


def _gradient_array(gradient, like):
    g = gradient.data if isinstance(gradient, Tensor) else np.asarray(gradient, dtype=like.dtype)
    if tuple(g.shape) != like.shape:
        raise RuntimeError(
            f"backward: gradient has shape {tuple(g.shape)}, expected the output's {like.shape}"
        )
    if np.dtype(g.dtype) != like.dtype:
        raise TypeError(f"backward: gradient has dtype {g.dtype}, expected {like.dtype}")
    return device.to_device(g, like.device)


# ----------------------------------------------------------------------------- creation
def _resolve_dtype(data, dtype):
    if dtype is not None:
        return check_dtype("tensor", dtype)
    if isinstance(data, (np.ndarray, np.generic)):  # NumPy arrays and scalars keep theirs
        return check_dtype("tensor", data.dtype)
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        return float32  # Python floats and lists of them are float32, as in torch.tensor
    return check_dtype("tensor", arr.dtype)


def tensor(data, dtype=None, device="cpu", requires_grad=False):
    """A new leaf tensor holding a copy of ``data`` (array-like or Tensor)."""
    from minicbam import device as device_mod

    if isinstance(data, Tensor):
        data = data.numpy()
    dtype = _resolve_dtype(data, dtype)
    host = np.array(data, dtype=dtype, copy=True, order="C")
    target = device_mod.normalize_device(device)
    return Tensor(device_mod.to_device(host, target), requires_grad=requires_grad)


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def _full(shape, value, dtype, device_name, requires_grad, op="full"):
    dtype = float32 if dtype is None else check_dtype(op, dtype)
    dev = device.normalize_device(device_name)
    arr = device.full(_shape_arg(shape), value, dtype, dev)
    return Tensor(arr, requires_grad=requires_grad)


def zeros(*shape, dtype=None, device="cpu", requires_grad=False):
    return _full(shape, 0, dtype, device, requires_grad, "zeros")


def ones(*shape, dtype=None, device="cpu", requires_grad=False):
    return _full(shape, 1, dtype, device, requires_grad, "ones")


def full(shape, fill_value, dtype=None, device="cpu", requires_grad=False):
    return _full((shape,), fill_value, dtype, device, requires_grad)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return zeros(
        t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad
    )


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return ones(
        t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad
    )


def randn(*shape, dtype=None, device="cpu", requires_grad=False):
    dtype = float32 if dtype is None else check_dtype("randn", dtype, floating=True)
    host = _rng.standard_normal(_shape_arg(shape)).astype(dtype)
    return tensor(host, device=device, requires_grad=requires_grad)


def rand(*shape, dtype=None, device="cpu", requires_grad=False):
    dtype = float32 if dtype is None else check_dtype("rand", dtype, floating=True)
    host = _rng.random(_shape_arg(shape)).astype(dtype)
    return tensor(host, device=device, requires_grad=requires_grad)


def arange(*args, dtype=None, device="cpu"):
    host = np.arange(*args)
    if dtype is None and host.dtype.kind == "f":
        dtype = float32  # float bounds give the default float, as torch.arange
    return tensor(host, dtype=dtype, device=device)
