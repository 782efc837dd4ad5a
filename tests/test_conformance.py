"""Same weights, same batches -> same logits, loss, gradients and loss curve as NumPy.

One test, parametrised over every registered framework and every case (cell x
optimiser, and penalties): a new framework only registers in common/registry.py.
Frameworks that need other environment variables (Keras backends) run in a worker
process, which measures all cases at once.
"""

import json

import pytest

from charrnn.common import registry
from tests.conformance import CASES, SEQ_LEN, TOLERANCES, measure
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
