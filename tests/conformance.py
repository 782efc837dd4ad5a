"""The conformance measurements: one framework against the NumPy reference.

Run in-process by tests/test_conformance.py, or as a worker in the framework's
own environment (another venv, another KERAS_BACKEND):

    python -m tests.conformance pytorch      # prints one JSON object

Everything starts from the same portable weights and the same fixed batches. Every
cell meets every optimiser (CASES), plus one case with both penalties on and one per
optimiser with the linear learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

from charrnn.common.config import CELLS, ModelConfig, OptimConfig
from charrnn.common.weights import init_weights

# Tiny sizes keep the test fast; two layers and E != H exercise every shape.
CONFIG = ModelConfig(vocab_size=23, embedding_size=8, rnn_size=16, num_layers=2)
BATCH_SIZE, SEQ_LEN, STEPS = 4, 12, 20
# Learning rates large enough that 20 steps move the loss visibly; momentum and a decay
# rate away from their defaults, so a dropped or misplaced one shows.
OPTIMS = {"adam": OptimConfig(learning_rate=0.01, clip_norm=1.0),
          "rmsprop": OptimConfig(optimizer="rmsprop", learning_rate=0.01, clip_norm=1.0,
                                 decay_rate=0.9),
          "sgd": OptimConfig(optimizer="sgd", learning_rate=0.1, clip_norm=1.0, momentum=0.9)}
CASES = {f"{cell}-{name}": (cell, optim) for cell in CELLS for name, optim in OPTIMS.items()}
CASES["lstm-adam-l1-l2"] = ("lstm", OptimConfig(learning_rate=0.01, clip_norm=1.0,
                                                l1=1e-3, l2=1e-2))
# The linear schedule (docs/SPEC.md section 9) with each optimiser: `set_learning_rate`
# before every step must reach the update, also where the update is a compiled graph.
for _name, _optim in OPTIMS.items():
    CASES[f"lstm-{_name}-linear"] = ("lstm", dataclasses.replace(_optim, lr_schedule="linear"))
TOLERANCES = {"logits": 1e-5, "loss": 1e-6, "grads": 1e-5, "loss_after_steps": 1e-4,
              "weights_round_trip": 0.0, "state": 1e-5}


def fixed_batches(steps: int = STEPS, seed: int = 7):
    """`steps` (x, y) int32 batches of shape (BATCH_SIZE, SEQ_LEN), the same every run."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, size=BATCH_SIZE * SEQ_LEN * steps + 1)
    x = ids[:-1].reshape(BATCH_SIZE, steps, SEQ_LEN).transpose(1, 0, 2)
    y = ids[1:].reshape(BATCH_SIZE, steps, SEQ_LEN).transpose(1, 0, 2)
    return [(x[j].astype(np.int32), y[j].astype(np.int32)) for j in range(steps)]


def measure(model_cls, case: str = "lstm-adam") -> dict:
    """Largest absolute differences from the reference, keyed like TOLERANCES, for one
    of CASES."""
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    cell, optim = CASES[case]
    config = dataclasses.replace(CONFIG, cell=cell)
    weights = init_weights(config, seed=3)
    # Non-zero biases so that a dropped or doubled bias cannot hide.
    rng = np.random.default_rng(11)
    for k in range(config.num_layers):
        for bias in config.bias_names():
            name = f"{config.layer(k)}.{bias}"
            weights[name] = weights[name] + rng.uniform(
                -0.1, 0.1, weights[name].shape).astype(np.float32)
    weights["dense.b"] = rng.uniform(-0.1, 0.1, config.vocab_size).astype(np.float32)
    device = model_cls.setup_device("cpu", None)
    ref = NumpyCharRNN(config, weights, optim)
    model = model_cls(config, weights, optim, device=device)
    batches = fixed_batches()
    out = {"framework": model_cls.framework, "case": case}

    out["weights_round_trip"] = max(float(np.abs(model.get_weights()[n] - weights[n]).max())
                                    for n in weights)
    # A non-zero incoming state checks that the state is really used.
    # GRU and RNN have no cell state: their c is zeros in and out (SPEC section 10).
    h0 = rng.normal(0, 0.5, (config.num_layers, BATCH_SIZE, config.rnn_size)).astype(np.float32)
    c0 = rng.normal(0, 0.5, h0.shape).astype(np.float32) * (cell == "lstm")
    x, y = batches[0]
    ref_logits, ref_state = ref.forward(x, ref.state_from_numpy(h0, c0))
    logits, state = model.forward(x, model.state_from_numpy(h0, c0))
    out["logits"] = float(np.abs(np.asarray(logits) - ref_logits).max())
    out["state"] = max(float(np.abs(a - b).max()) for a, b in
                       zip(model.state_to_numpy(state), ref.state_to_numpy(ref_state)))
    ref_loss, ref_grads, _ = ref.loss_and_grads(x, y, ref.state_from_numpy(h0, c0))
    loss, grads, _ = model.loss_and_grads(x, y, model.state_from_numpy(h0, c0))
    out["loss"] = abs(loss - ref_loss)
    out["grads"] = max(float(np.abs(np.asarray(grads[n]) - ref_grads[n]).max())
                       for n in ref_grads)
    out["grads_missing"] = sorted(set(ref_grads) - set(grads))
    out.update(measure_steps(model, ref, batches[1][0], h0, c0))  # the initial weights

    # 20 training steps with the state carried: the loss curves must agree.
    ref_state, state = ref.zero_state(BATCH_SIZE), model.zero_state(BATCH_SIZE)
    ref_curve, curve = [], []
    for step, (x, y) in enumerate(batches, 1):
        if optim.lr_schedule != "constant":  # as the training loop sets it
            rate = optim.learning_rate_at(step, len(batches))
            ref.set_learning_rate(rate)
            model.set_learning_rate(rate)
        loss, ref_state = ref.train_step(x, y, ref_state)
        ref_curve.append(loss)
        loss, state = model.train_step(x, y, state)
        curve.append(loss)
    out["loss_after_steps"] = float(np.abs(np.array(curve) - np.array(ref_curve)).max())
    out["curve"] = curve
    out["ref_curve"] = ref_curve
    # The eval path must agree after training too.
    ref_loss, _ = ref.eval_step(*batches[0], ref.zero_state(BATCH_SIZE))
    loss, _ = model.eval_step(*batches[0], model.zero_state(BATCH_SIZE))
    out["eval_loss_after_steps"] = abs(loss - ref_loss)
    ref_logits, _ = ref.step(batches[0][0][:, 0], ref.zero_state(BATCH_SIZE))
    logits, _ = model.step(batches[0][0][:, 0], model.zero_state(BATCH_SIZE))
    out["step_logits_after_steps"] = float(np.abs(np.asarray(logits) - ref_logits).max())
    return out


def measure_steps(model, ref, feed: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> dict:
    """Generation's loop, `steps` (which a framework may run inside its own graph),
    against the reference's from the state (h0, c0): each step's logits handed to the
    callback, the state after the last, and the callback's own exception coming out of
    it as is. `feed` (B, T): the ids fed, one column a step."""
    count = feed.shape[1] - 1

    def feeding(seen):
        def choose(logits, t):
            seen.append(np.array(logits, np.float32))
            return feed[:, t + 1]
        return choose

    ref_seen, seen = [], []
    ref_state = ref.steps(feed[:, 0], ref.state_from_numpy(h0, c0), count, feeding(ref_seen))
    state = model.steps(feed[:, 0], model.state_from_numpy(h0, c0), count, feeding(seen))
    out = {"steps_count": len(seen),
           "steps_logits": max(float(np.abs(a - b).max()) for a, b in zip(seen, ref_seen)),
           "steps_state": max(float(np.abs(a - b).max()) for a, b in
                              zip(model.state_to_numpy(state), ref.state_to_numpy(ref_state)))}

    def failing(logits, t):
        if t == 2:
            raise ValueError("stopped at step 2")
        return feed[:, t + 1]

    try:
        model.steps(feed[:, 0], model.zero_state(len(feed)), count, failing)
        out["steps_raises"] = "nothing"
    except Exception as exc:  # what the caller of `steps` sees
        out["steps_raises"] = f"{type(exc).__name__}: {exc}"
    return out


def measure_all(model_cls) -> dict[str, dict]:
    """`measure` for every case, keyed by case; a case that raises records its error."""
    results = {}
    for case in CASES:
        try:
            results[case] = measure(model_cls, case)
        except Exception as exc:  # reported by the test, case by case
            results[case] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


if __name__ == "__main__":
    from charrnn.common import registry
    print(json.dumps(measure_all(registry.load(sys.argv[1]))))
