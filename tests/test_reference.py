"""The NumPy reference checked on its own: its hand-written gradients against finite
differences of its forward pass, for every cell with both penalties on, and its
optimisers against the formulas of docs/SPEC.md section 9 written out once more.
Every other framework is then tested against it (tests/test_conformance.py)."""

import dataclasses

import numpy as np
import pytest

from charrnn.common.config import CELLS, ModelConfig, OptimConfig
from charrnn.common.weights import init_weights, penalty
from charrnn.frameworks.numpy_model import NumpyCharRNN

CONFIG = ModelConfig(vocab_size=11, embedding_size=5, rnn_size=6, num_layers=2)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell):
    config = dataclasses.replace(CONFIG, cell=cell)
    optim = OptimConfig(l1=1e-2, l2=1e-1)
    rng = np.random.default_rng(0)
    weights = init_weights(config, seed=1)
    weights = {n: a + rng.uniform(-0.2, 0.2, a.shape).astype(np.float32)
               for n, a in weights.items()}  # non-zero biases, kernels away from 0
    x = rng.integers(1, config.vocab_size, (3, 7)).astype(np.int32)
    y = rng.integers(1, config.vocab_size, (3, 7)).astype(np.int32)
    h0 = rng.normal(0, 0.5, (2, 3, config.rnn_size)).astype(np.float32)
    c0 = rng.normal(0, 0.5, h0.shape).astype(np.float32) * (cell == "lstm")

    def objective(w):
        model = NumpyCharRNN(config, w, optim)
        loss, _, _ = model.loss_and_grads(x, y, (h0, c0))
        return loss + penalty(w, config, optim.l1, optim.l2)

    _, grads, _ = NumpyCharRNN(config, weights, optim).loss_and_grads(x, y, (h0, c0))
    assert set(grads) == set(config.param_shapes())
    eps = 1e-2
    for name, w in weights.items():
        # Entries away from 0, where |w| (the L1 term) has its kink.
        far = np.argwhere(np.abs(w) > 3 * eps)
        for index in map(tuple, far[rng.choice(len(far), 4, replace=False)]):
            plus, minus = dict(weights), dict(weights)
            plus[name], minus[name] = w.copy(), w.copy()
            plus[name][index] += eps
            minus[name][index] -= eps
            numeric = (objective(plus) - objective(minus)) / (2 * eps)
            assert grads[name][index] == pytest.approx(numeric, rel=2e-2, abs=2e-4), \
                (cell, name, index)


@pytest.mark.parametrize("optimizer", ["rmsprop", "sgd"])
def test_optimisers_follow_section_9(optimizer):
    """Two updates from the formulas, against the reference's own update."""
    optim = OptimConfig(optimizer=optimizer, learning_rate=0.1, clip_norm=1e9,
                        **({"decay_rate": 0.9} if optimizer == "rmsprop" else {"momentum": 0.8}))
    weights = init_weights(CONFIG, seed=2)
    model = NumpyCharRNN(CONFIG, weights, optim)
    rng = np.random.default_rng(3)
    p = weights["dense.w"].astype(np.float64)
    state = np.zeros_like(p)
    for _ in range(2):
        g = rng.normal(size=p.shape).astype(np.float32)
        model._update({n: (g if n == "dense.w" else np.zeros_like(a))
                       for n, a in weights.items()})
        if optimizer == "rmsprop":
            state = 0.9 * state + 0.1 * g.astype(np.float64) ** 2
            p = p - 0.1 * g / (np.sqrt(state) + 1e-8)
        else:
            state = 0.8 * state + g
            p = p - 0.1 * state
    np.testing.assert_allclose(model.params["dense.w"], p, rtol=1e-5, atol=1e-6)
