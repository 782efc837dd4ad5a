"""The update rules of docs/SPEC.md sections 4 and 9, written once: Adam with PyTorch's
bias correction and epsilon placement, RMSprop (eps outside the square root, not
centred, no momentum), SGD with PyTorch's momentum, and the gradient of the L1/L2
penalty.

Each rule is arithmetic on arrays, not a framework's code: `xp` is the namespace whose
`sqrt` and `sign` apply to the arrays given (numpy, cupy, mxnet.nd, pytensor.tensor,
keras.ops), and the rest is `*`, `/`, `+` and `-`, which every framework's arrays and
symbolic tensors define. The rules return new arrays; a framework keeps only its glue:
creating the slots (zeros like the parameter) and writing the results back, in place
or as graph updates. The operations are the NumPy reference's, in its order, so the
frameworks that round as NumPy does get its float32 results to the bit.

`f32` is applied to every host scalar (a hyperparameter, the learning rate, a bias
correction) before it meets an array: np.float32 where a float64 scalar would widen
the arithmetic or become a float64 constant of a graph (NumPy 2's scalars, PyTensor);
by default the scalar stays as it is, for frameworks that cast it to the array's type
themselves (MXNet, Keras).

    >>> import numpy as np
    >>> p, b = sgd_update(np.float32([1.0]), np.float32([0.5]), np.float32([0.0]),
    ...                   lr=0.1, momentum=0.9, f32=np.float32)
    >>> p.tolist(), b.tolist()
    ([0.949999988079071], [0.5])

Standard library only: no framework, not even NumPy, is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charrnn.common.config import OptimConfig

Array = Any  # a framework's array or symbolic tensor


def _keep(a):
    return a


def _sqrt(xp, a):
    """The square root of a bias correction: math.sqrt of a host number (the update
    count t a Python int; the same correctly rounded float64 as np.sqrt), xp.sqrt of a
    graph's scalar (t symbolic, as in PyTensor and Keras)."""
    return math.sqrt(a) if isinstance(a, (int, float)) else xp.sqrt(a)


def adam_update(xp, param: Array, grad: Array, m: Array, v: Array, t, lr, beta1: float,
                beta2: float, eps: float, f32: Callable = _keep) -> tuple[Array, Array, Array]:
    """One Adam step (SPEC section 4, PyTorch's formula) of update t (1-based):

        m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The bias corrections are computed in the precision of t and lr (float64 for host
    numbers) and rounded once by `f32`. Returns the new (param, m, v)."""
    step_size = f32(lr / (1.0 - beta1 ** t))
    root_correction2 = f32(_sqrt(xp, 1.0 - beta2 ** t))
    m = f32(beta1) * m + f32(1.0 - beta1) * grad
    v = f32(beta2) * v + f32(1.0 - beta2) * grad * grad
    denom = xp.sqrt(v) / root_correction2 + f32(eps)
    return param - step_size * m / denom, m, v


def rmsprop_update(xp, param: Array, grad: Array, v: Array, lr, rho: float, eps: float,
                   f32: Callable = _keep) -> tuple[Array, Array]:
    """One RMSprop step (SPEC section 9): v = rho v + (1 - rho) g g,
    p = p - lr g / (sqrt(v) + eps). Returns the new (param, v)."""
    v = f32(rho) * v + f32(1.0 - rho) * grad * grad
    return param - f32(lr) * grad / (xp.sqrt(v) + f32(eps)), v


def sgd_update(param: Array, grad: Array, b: Array, lr, momentum: float,
               f32: Callable = _keep) -> tuple[Array, Array]:
    """One SGD step with PyTorch's momentum (SPEC section 9): b = momentum b + g,
    p = p - lr b (the learning rate outside the buffer). Returns the new (param, b)."""
    b = f32(momentum) * b + grad
    return param - f32(lr) * b, b


def update(xp, optim: OptimConfig, param: Array, grad: Array, slots: dict[str, Array], t,
           lr, f32: Callable = _keep) -> tuple[Array, dict[str, Array]]:
    """The step of `optim.optimizer` with `optim`'s hyperparameters: `slots` are the
    parameter's state arrays by the names of `optim.slots()` (Adam's m and v, RMSprop's
    v, SGD's b), t the update count (1-based), lr this update's learning rate. Returns
    the new param and the new slots, by the same names."""
    if optim.optimizer == "adam":
        param, m, v = adam_update(xp, param, grad, slots["m"], slots["v"], t, lr,
                                  optim.beta1, optim.beta2, optim.eps, f32)
        return param, {"m": m, "v": v}
    if optim.optimizer == "rmsprop":
        param, v = rmsprop_update(xp, param, grad, slots["v"], lr, optim.decay_rate,
                                  optim.eps, f32)
        return param, {"v": v}
    param, b = sgd_update(param, grad, slots["b"], lr, optim.momentum, f32)
    return param, {"b": b}


def penalty_grad(xp, kernel: Array, l1: float, l2: float, f32: Callable = _keep) -> Array:
    """The gradient of l1 * sum|W| + l2 * sum W^2 w.r.t. one kernel W (SPEC section 9):
    l1 sign(W) + 2 l2 W, where sign(0) = 0, so |w|'s gradient at 0 is 0. Added to the
    cross-entropy's gradient before the global-norm clip."""
    return f32(l1) * xp.sign(kernel) + f32(2.0 * l2) * kernel
