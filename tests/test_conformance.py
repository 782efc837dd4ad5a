"""Same weights, same batches -> same logits, loss, gradients and loss curve as NumPy.

One test, parametrised over every registered framework and every case (cell x
optimiser, and penalties): a new framework only registers in common/registry.py.
Frameworks that need other environment variables (Keras backends) run in a worker
process, which measures all cases at once.
"""

import json

import pytest

from charrnn.common import registry
from charrnn.common.config import BF16_MIXED, CELLS
from charrnn.common.precision import BF16_UNIT_ROUNDOFF
from tests.conformance import (
    BF16_CURVE_TOLERANCE,
    BF16_EXACT,
    BF16_EXACT_TOLERANCE,
    BF16_TOLERANCES,
    CASES,
    SEQ_LEN,
    TOLERANCES,
    measure,
    measure_bf16,
    measure_bf16_curve,
)
from tests.conftest import framework_params, require, run_worker

_WORKER_RESULTS: dict[tuple[str, ...], dict] = {}  # (framework, *args) -> its worker's output


def _in_worker(name: str, *args: str) -> dict | None:
    """For a framework that needs other environment variables than this process has (a
    Keras backend): `python -m tests.conformance NAME ARGS` in a worker, once, measuring
    everything at once. None for a framework measured here."""
    entry = registry.FRAMEWORKS[name]
    if not (registry.unavailable_reason(name) and entry.env_vars and entry.script.exists()):
        return None
    if (name, *args) not in _WORKER_RESULTS:
        proc = run_worker(name, "tests.conformance", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _WORKER_RESULTS[name, *args] = json.loads(proc.stdout.strip().splitlines()[-1])
    return _WORKER_RESULTS[name, *args]


def _result(name: str, case: str) -> dict:
    results = _in_worker(name)
    if results is None:
        return measure(require(name), case)
    assert "error" not in results[case], f"{name} {case}: {results[case].get('error')}"
    return results[case]


def _bf16_result(name: str, key: str) -> dict:
    """measure_bf16 of cell `key`, or measure_bf16_curve for "curve"; skipped for a
    framework without the path (tests/test_precision.py sees it refuse)."""
    results = _in_worker(name, "bf16")
    if results is None:
        model_cls = require(name)
        if BF16_MIXED not in model_cls.precisions:
            pytest.skip(f"{name} has no bf16-mixed path: {model_cls.precision_refusal}")
        results = {
            key: measure_bf16_curve(model_cls) if key == "curve" else measure_bf16(model_cls, key)}
    if not results:
        pytest.skip(f"{name} has no bf16-mixed path (docs/SPEC.md section 12)")
    return results[key]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", framework_params(grouped=True))
def test_matches_numpy_reference(name, case):
    result = _result(name, case)
    assert result["grads_missing"] == []
    failures = {key: (result[key], tol) for key, tol in TOLERANCES.items() if result[key] > tol}
    assert not failures, f"{name}: (difference, tolerance) {failures}"
    assert result["eval_loss_after_steps"] <= TOLERANCES["loss_after_steps"]
    assert result["step_logits_after_steps"] <= TOLERANCES["logits"] * 10
    # Generation's loop (`steps`) sees the reference's logits and keeps the caller's error.
    assert result["steps_count"] == SEQ_LEN - 1
    assert result["steps_logits"] <= TOLERANCES["logits"]
    assert result["steps_state"] <= TOLERANCES["state"]
    assert result["steps_raises"] == "ValueError: stopped at step 2"



@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("name", framework_params(grouped=True))
def test_bf16_mixed_matches_the_emulating_reference(name, cell):
    """Logits, state, loss and gradients within BF16_TOLERANCES of the reference's exact
    emulation (relative to the largest magnitude; derived in tests/conformance.py), the
    flag visibly changing the framework's arithmetic, and 20 training steps close. A
    framework without the path is skipped here; tests/test_precision.py sees it refuse."""
    result = _bf16_result(name, cell)
    failures = {key: (result[key], tol) for key, tol in BF16_TOLERANCES.items()
                if result[key] > tol}
    assert not failures, f"{name} {cell}: (difference, tolerance) {failures}"
    if name == "numpy":  # the emulation against itself: the same operations
        assert all(result[key] == 0 for key in BF16_TOLERANCES), result
        return
    assert result["effect"] > BF16_UNIT_ROUNDOFF / 4, result
    if name in BF16_EXACT:  # the section's roundings and no others: float32 sum order
        exact = ("logits", "state", "loss", "grads")
        assert all(result[key] <= BF16_EXACT_TOLERANCE for key in exact), result


# The LSTM of every framework that declares bf16-mixed (PyTorch's takes about 25 s); the
# 20-step cases above cover every cell.
@pytest.mark.parametrize("name", framework_params(grouped=True))
def test_200_bf16_steps_stay_near_the_float32_curve(name):
    result = _bf16_result(name, "curve")
    assert result["last_loss"] < result["first_loss"] - 1.0  # it learnt
    failures = {key: (result[key], tol) for key, tol in BF16_CURVE_TOLERANCE.items()
                if result[key] > tol}
    assert not failures, f"{name}: (distance from the fp32 curve, tolerance) {failures}"
