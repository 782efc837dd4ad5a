"""Exact unit tests of charrnn.common.optim, the update rules every framework without a
library optimiser of its own runs: one step of each on NumPy arrays against docs/SPEC.md
sections 4 and 9 written out, and the penalty's gradient.

They need only NumPy, so they run in both environments.
"""

import subprocess
import sys

import numpy as np
import pytest

from charrnn.common.config import OptimConfig
from charrnn.common.optim import adam_update, penalty_grad, rmsprop_update, sgd_update, update
from charrnn.common.paths import ROOT

RNG = np.random.default_rng(0)
P, G, M, V = (RNG.normal(size=(3, 4)) for _ in range(4))
V = np.abs(V)  # a mean square


def test_adam_is_pytorchs_formula():
    t, lr, beta1, beta2, eps = 3, 0.01, 0.9, 0.999, 1e-8
    p, m, v = adam_update(np, P, G, M, V, t, lr, beta1, beta2, eps)
    m_ref = beta1 * M + (1 - beta1) * G
    v_ref = beta2 * V + (1 - beta2) * G ** 2
    m_hat, v_hat = m_ref / (1 - beta1 ** t), v_ref / (1 - beta2 ** t)
    np.testing.assert_allclose(m, m_ref, rtol=1e-15)
    np.testing.assert_allclose(v, v_ref, rtol=1e-15)
    np.testing.assert_allclose(p, P - lr * m_hat / (np.sqrt(v_hat) + eps), rtol=1e-12)


def test_adam_first_step_moves_by_the_learning_rate():
    # From zero moments the first step is lr * sign(g) (up to eps): bias correction.
    p, _, _ = adam_update(np, P, G, np.zeros_like(M), np.zeros_like(V), 1, 0.01, 0.9, 0.999,
                          1e-8)
    np.testing.assert_allclose(P - p, 0.01 * np.sign(G), rtol=1e-5)


def test_rmsprop_puts_eps_outside_the_root():
    lr, rho, eps = 0.01, 0.95, 1e-3
    p, v = rmsprop_update(np, P, G, V, lr, rho, eps)
    v_ref = rho * V + (1 - rho) * G ** 2
    np.testing.assert_allclose(v, v_ref, rtol=1e-15)
    np.testing.assert_allclose(p, P - lr * G / (np.sqrt(v_ref) + eps), rtol=1e-14)


def test_sgd_keeps_the_learning_rate_outside_the_buffer():
    p, b = sgd_update(P, G, M, lr=0.1, momentum=0.8)
    np.testing.assert_allclose(b, 0.8 * M + G, rtol=1e-15)
    np.testing.assert_allclose(p, P - 0.1 * (0.8 * M + G), rtol=1e-14)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_update_dispatches_with_the_configs_hyperparameters(optimizer):
    optim = OptimConfig(optimizer=optimizer, decay_rate=0.9, momentum=0.5, beta1=0.8,
                        beta2=0.99, eps=1e-6)
    slots = {name: {"m": M, "v": V, "b": M}[name] for name in optim.slots()}
    p, new_slots = update(np, optim, P, G, slots, 2, 0.05)
    if optimizer == "adam":
        expected = adam_update(np, P, G, M, V, 2, 0.05, 0.8, 0.99, 1e-6)
    elif optimizer == "rmsprop":
        expected = rmsprop_update(np, P, G, V, 0.05, 0.9, 1e-6)
    else:
        expected = sgd_update(P, G, M, 0.05, 0.5)
    assert list(new_slots) == list(optim.slots())
    for got, want in zip((p, *new_slots.values()), expected):
        np.testing.assert_array_equal(got, want)


def test_float32_in_float32_out():
    """With np.float32 scalars no float64 scalar widens a float32 step (NumPy 2 keeps
    a float64 scalar's precision)."""
    p32, g32, m32, v32 = (a.astype(np.float32) for a in (P, G, M, V))
    for optimizer in ("adam", "rmsprop", "sgd"):
        optim = OptimConfig(optimizer=optimizer)
        slots = {name: {"m": m32, "v": v32, "b": m32}[name] for name in optim.slots()}
        p, new_slots = update(np, optim, p32, g32, slots, 7, 0.01, np.float32)
        assert {a.dtype for a in (p, *new_slots.values())} == {np.dtype(np.float32)}


def test_penalty_gradient_and_its_value_at_zero():
    """l1 sign(w) + 2 l2 w, with the gradient of |w| at 0 taken as 0 (section 9)."""
    w = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(penalty_grad(np, w, 0.1, 0.01),
                               [-0.1 - 0.04, 0.0, 0.1 + 0.06], rtol=1e-15)
    assert penalty_grad(np, np.zeros(2), 0.5, 0.0).tolist() == [0.0, 0.0]
    g32 = penalty_grad(np, w.astype(np.float32), 1e-3, 1e-2, np.float32)
    assert g32.dtype == np.float32


def test_the_shared_modules_import_no_framework():
    """optim and gpus import only the standard library (gpus its framework lazily)."""
    code = ("import sys, charrnn.common.optim, charrnn.common.gpus; "
            "heavy = {'numpy', 'torch', 'tensorflow', 'jax', 'keras', 'chainer', 'mxnet', "
            "'pytensor'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
