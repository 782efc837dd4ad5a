"""Same weights, same batches -> same logits, loss, gradients and loss curve as NumPy.

One test, parametrised over every registered framework and every case (cell x
optimiser, and penalties): a new framework only registers in common/registry.py.
Frameworks that need other environment variables (Keras backends) run in a worker
process, which measures all cases at once.
"""

import json

import pytest

from charrnn.common import registry
from charrnn.common.config import CELLS
from charrnn.common.precision import BF16_UNIT_ROUNDOFF
from tests.conformance import (
    BF16_EXACT,
    BF16_EXACT_TOLERANCE,
    BF16_TOLERANCES,
    CASES,
    SEQ_LEN,
    TOLERANCES,
    measure,
    measure_bf16,
)
from tests.conftest import framework_params, require, run_worker

_WORKER_RESULTS: dict[str, dict] = {}  # framework -> case -> result, one worker each


def _result(name: str, case: str) -> dict:
    entry = registry.FRAMEWORKS[name]
    reason = registry.unavailable_reason(name)
    if reason and entry.env_vars and entry.script.exists():
        if name not in _WORKER_RESULTS:
            proc = run_worker(name, "tests.conformance")
            assert proc.returncode == 0, proc.stderr[-3000:]
            _WORKER_RESULTS[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        result = _WORKER_RESULTS[name][case]
        assert "error" not in result, f"{name} {case}: {result.get('error')}"
        return result
    return measure(require(name), case)


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
    model_cls = require(name)
    if "bf16-mixed" not in model_cls.precisions:
        pytest.skip(f"{name} has no bf16-mixed path yet (docs/SPEC.md section 12)")
    result = measure_bf16(model_cls, cell)
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
