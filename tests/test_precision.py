"""`--precision bf16-mixed` (docs/SPEC.md section 12): the bf16 rounding of common/ against
ml_dtypes bit for bit, the NumPy reference's emulation on a hand-computed case, 200 steps
of bf16-mixed training against the float32 curve, and the command line (a framework
with the path trains, one without refuses in one line, a resume keeps its precision).
The per-framework agreement with the emulation is in tests/test_conformance.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from charrnn.common.config import BF16_MIXED, ModelConfig, OptimConfig
from charrnn.common.precision import BF16_UNIT_ROUNDOFF, identity, operand_rounding, to_bf16
from charrnn.common.weights import init_weights
from charrnn.frameworks.numpy_model import NumpyCharRNN
from tests.cli_cases import run_cases
from tests.conftest import TINY, ok, require


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def test_to_bf16_is_ml_dtypes_rounding_bit_for_bit():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 2 ** 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    # Exact ties (low 16 bits 0x8000) with even and odd kept bits, the values next to
    # them, subnormals, the largest finite float32 (rounds to inf), zeros and infinities.
    ties = (patterns & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    edges = np.array([0, 0x80000000, 1, 0x7FFF, 0x8000, 0x18000, 0x7F7FFFFF, 0x7F7F8000,
                      0x7F7F7FFF, 0x7F800000, 0xFF800000, 0x00800000], np.uint32)
    bits = np.concatenate([patterns, ties, ties - np.uint32(1), ties + np.uint32(1), edges])
    a = bits.view(np.float32)
    finite = np.isfinite(a) | np.isinf(a)  # NaNs apart: their payloads may differ
    want = a[finite].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(_bits(to_bf16(a[finite])), _bits(want))
    assert np.isnan(to_bf16(a[~finite])).all()


def test_to_bf16_ties_go_to_even_and_error_is_at_most_u():
    one_and_half_ulp = np.float32(1.0 + 2.0 ** -8)  # halfway between 1 and 1 + 2^-7
    assert to_bf16(np.array([one_and_half_ulp]))[0] == 1.0
    assert to_bf16(np.array([np.float32(1.0 + 3 * 2.0 ** -8)]))[0] == 1.0 + 2.0 ** -6
    a = np.random.default_rng(1).normal(0, 10, 10000).astype(np.float32)
    assert (np.abs(to_bf16(a) - a) <= BF16_UNIT_ROUNDOFF * np.abs(a)).all()
    assert operand_rounding("fp32") is identity and operand_rounding(BF16_MIXED) is to_bf16


def test_reference_emulation_is_bf16_operands_and_float32_sums():
    """One RNN layer, two steps, by hand: each product's operands rounded, nothing else."""
    config = ModelConfig(vocab_size=7, embedding_size=5, rnn_size=6, num_layers=1, cell="rnn")
    w = init_weights(config, seed=2)
    x = np.array([[1, 4], [3, 2]], np.int32)  # (batch_size 2, seq_len 2)
    model = NumpyCharRNN(config, w, OptimConfig(precision=BF16_MIXED))
    logits, _ = model.forward(x, model.zero_state(2))
    q = to_bf16
    h = np.zeros((2, 6), np.float32)
    want = []
    for t in range(2):
        h = np.tanh(q(h) @ q(w["rnn.0.w_hh"]).T
                    + (q(w["embedding"][x[:, t]]) @ q(w["rnn.0.w_ih"]).T + w["rnn.0.bias"]))
        want.append(q(h) @ q(w["dense.w"]).T + w["dense.b"])
    want = np.stack(want, axis=1)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-6)
    fp32 = NumpyCharRNN(config, w, OptimConfig())
    assert np.abs(fp32.forward(x, fp32.zero_state(2))[0] - want).max() > 1e-4


@pytest.mark.parametrize("name", ["numpy", "jax", "mxnet"])
def test_generation_and_export_stay_float32(name):
    """A bf16-mixed model's `step` (generation) computes what an fp32 model's does."""
    model_cls = NumpyCharRNN if name == "numpy" else require(name)
    config = ModelConfig(vocab_size=7, embedding_size=5, rnn_size=6, num_layers=2)
    w = init_weights(config, seed=2)
    bf16 = model_cls(config, w, OptimConfig(precision=BF16_MIXED))
    fp32 = model_cls(config, w, OptimConfig())
    ids = np.array([1, 5], np.int32)
    np.testing.assert_array_equal(bf16.step(ids, bf16.zero_state(2))[0],
                                  fp32.step(ids, fp32.zero_state(2))[0])
    assert all(a.dtype == np.float32 for a in bf16.get_weights().values())


def _train(model_cls, argv):
    return run_cases(model_cls, [{"argv": ["train", *argv]}])[0]


@pytest.mark.parametrize("name", ["pytorch", "jax", "mxnet"])
def test_trains_in_bf16_mixed_and_records_it(name, corpus, tmp_path):
    model_cls = require(name)
    ck, log = tmp_path / "ck", tmp_path / "run.log"
    result = ok(_train(model_cls, ["--text-path", str(corpus), *TINY, "--max-steps", "4",
                                   "--precision", "bf16-mixed", "--checkpoint-path", str(ck),
                                   "--log-path", str(log)]))
    assert "precision bf16-mixed" in result["stderr"]
    assert json.loads((ck / "trainer.json").read_text())["train_config"]["precision"] == (
        "bf16-mixed")
    header = json.loads(log.with_suffix(".jsonl").read_text().splitlines()[0])
    assert header["train_config"]["precision"] == "bf16-mixed"


def _no_bfloat16_dtype(name: str) -> None:
    """The refusal's measured reason, checked: the framework cannot make a bf16 tensor."""
    if name == "pytensor":
        import pytensor.tensor as pt
        # "Invalid dtype", or "Unsupported dtype for TensorType" once ml_dtypes (JAX's) has
        # taught NumPy the name: either way no bf16 tensor.
        with pytest.raises(TypeError, match="(Invalid|Unsupported) dtype.*bfloat16"):
            pt.matrix(dtype="bfloat16")
    else:
        import chainer.functions as F
        with pytest.raises(TypeError, match="data type 'bfloat16' not understood"):
            F.cast(np.zeros(2, np.float32), "bfloat16")


@pytest.mark.parametrize("name", ["pytensor", "chainer"])
def test_framework_without_bf16_refuses_in_one_line(name, corpus, tmp_path):
    """Refused with the reason the framework has no path (docs/SPEC.md section 12), which
    still holds for the installed version."""
    from tests.conftest import run
    model_cls = require(name)
    _no_bfloat16_dtype(name)
    assert "no bfloat16 dtype" in model_cls.precision_refusal
    ck = tmp_path / "ck"
    result = run(name, [{"argv": ["train", "--text-path", str(corpus), *TINY, "--max-steps",
                                  "1", "--precision", "bf16-mixed", "--checkpoint-path",
                                  str(ck), "--log-path", str(tmp_path / "run.log")]}],
                 tmp_path)[0]
    assert result["code"] == 2
    assert result["stderr"].strip().splitlines() == [
        f"error: --precision bf16-mixed: not available in {name}: "
        f"{model_cls.precision_refusal} (docs/SPEC.md section 12)"]
    assert not ck.exists() and not (tmp_path / "run.log").exists()


def test_resume_keeps_its_precision_and_refuses_another(corpus, tmp_path):
    ck = tmp_path / "ck"
    common = ["--checkpoint-path", str(ck), "--log-path", str(tmp_path / "run.log")]
    ok(_train(NumpyCharRNN, ["--text-path", str(corpus), *TINY, "--max-steps", "2",
                             "--sample-length", "0", "--precision", "bf16-mixed", *common]))
    refused = _train(NumpyCharRNN, ["--restore", str(ck), "--precision", "fp32"])
    assert refused["code"] == 2
    assert refused["stderr"].strip().splitlines() == [
        f"error: {ck}: --precision fp32 differs from the run it holds (--precision "
        f"bf16-mixed): a resume continues that run, so leave the flag out, or start a new "
        f"run from its weights with --init-from {ck / 'model.safetensors'}"]
    resumed = ok(_train(NumpyCharRNN, ["--restore", str(ck), "--max-steps", "3"]))
    assert "precision bf16-mixed" in resumed["stderr"]


def test_config_refuses_an_unknown_precision():
    from charrnn.common.errors import CharRnnError
    with pytest.raises(CharRnnError, match="unknown --precision 'fp16'"):
        OptimConfig(precision="fp16")
    assert dataclasses.replace(OptimConfig(), precision=BF16_MIXED).precision == BF16_MIXED
