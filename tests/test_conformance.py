"""Same weights, same batches -> same logits, loss, gradients and loss curve as NumPy.

One test, parametrised over every registered framework: a new framework only
registers in common/registry.py. Frameworks that need other environment
variables (Keras backends) run in a worker process.
"""

import json

import pytest

from common import registry
from tests.conformance import TOLERANCES, measure
from tests.conftest import framework_params, require, run_worker


@pytest.mark.parametrize("name", framework_params())
def test_matches_numpy_reference(name):
    entry = registry.FRAMEWORKS[name]
    reason = registry.unavailable_reason(name)
    if reason and entry.env_vars and entry.script.exists():
        proc = run_worker(name, "tests.conformance")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        result = measure(require(name))
    assert result["grads_missing"] == []
    failures = {key: (result[key], tol) for key, tol in TOLERANCES.items() if result[key] > tol}
    assert not failures, f"{name}: (difference, tolerance) {failures}"
    assert result["eval_loss_after_steps"] <= TOLERANCES["loss_after_steps"]
    assert result["step_logits_after_steps"] <= TOLERANCES["logits"] * 10
