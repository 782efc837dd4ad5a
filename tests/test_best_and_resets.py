"""--keep-best, --state-reset and --val-window (docs/SPEC.md sections 3, 4 and 10), on the
NumPy reference: they live in the shared loop, so one framework proves the loop's part,
and tests/conformance.py's 20-step curve zeroes rows the same way in every framework.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from charrnn.common.config import ModelConfig, OptimConfig, TrainConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.train import reset_rows, window_loss, zero_rows
from charrnn.common.weights import init_weights, load_portable
from charrnn.frameworks.numpy_model import NumpyCharRNN
from tests.cli_cases import run_cases
from tests.conftest import TEXT, TINY, ok


def _train(argv: list[str]) -> dict:
    return run_cases(NumpyCharRNN, [{"argv": ["train", *argv]}])[0]


def _epochs(log_path) -> list[dict]:
    lines = (json.loads(line) for line in log_path.with_suffix(".jsonl").read_text().splitlines())
    return [r for r in lines if r["kind"] == "epoch"]


def test_keep_best_keeps_the_lowest_val_loss_across_a_resume(tmp_path):
    ck, log, corpus = tmp_path / "ck", tmp_path / "run.log", tmp_path / "corpus.txt"
    # Validation text unlike the training text: memorising the one soon hurts the other.
    letters = np.random.default_rng(0).choice(list("abcdefghij \n"), 900)
    corpus.write_text(TEXT[:2100] + "".join(letters))
    run = [*TINY, "--val-fraction", "0.3", "--learning-rate", "0.02", "--sample-length", "0",
           "--checkpoint-path", str(ck), "--log-path", str(log)]
    ok(_train(["--text-path", str(corpus), *run, "--num-epochs", "3", "--keep-best"]))
    ok(_train(["--restore", "--checkpoint-path", str(ck), "--num-epochs", "8"]))  # kept on
    val = [r["val/loss"] for r in _epochs(log)]
    best = int(np.argmin(val))
    assert best not in (0, len(val) - 1), f"the curve should turn: {val}"
    meta = load_portable(ck / "best.safetensors").metadata
    assert float(meta["val_loss"]) == pytest.approx(val[best], abs=1e-6)
    assert int(meta["epoch"]) == best + 1
    assert json.loads((ck / "trainer.json").read_text())["progress"]["best_val_loss"] == (
        pytest.approx(val[best], abs=1e-6))
    # Resumed into another directory, past the turn: the best file comes along with the
    # best loss the run compares against.
    ok(_train(["--restore", str(ck), "--checkpoint-path", str(tmp_path / "ck2"),
               "--num-epochs", "9"]))
    assert _epochs(log)[-1]["val/loss"] > val[best]
    assert (tmp_path / "ck2" / "best.safetensors").read_bytes() == (
        ck / "best.safetensors").read_bytes()


def test_without_keep_best_there_is_no_best_file(corpus, tmp_path):
    ok(_train(["--text-path", str(corpus), *TINY, "--num-epochs", "1",
               "--checkpoint-path", str(tmp_path / "ck"), "--log-path", str(tmp_path / "l")]))
    assert not (tmp_path / "ck" / "best.safetensors").exists()


def test_reset_rows_are_drawn_from_the_seed_and_step_alone():
    cfg = TrainConfig(batch_size=64, state_reset=0.1)
    first = np.array([reset_rows(cfg, step) for step in range(500)])
    again = np.array([reset_rows(cfg, step) for step in range(500)])
    assert (first == again).all() and first.dtype == bool and first.shape == (500, 64)
    assert 0.09 < first.mean() < 0.11  # 32,000 draws: the share asked for
    assert not (first[1:] == first[:-1]).all(axis=1).all()  # each step its own rows
    other = np.array([reset_rows(TrainConfig(batch_size=64, state_reset=0.1, random_seed=7), s)
                      for s in range(500)])
    assert (other != first).any()
    assert not reset_rows(TrainConfig(batch_size=64), 3).any()  # 0: the spec as it was


def test_zero_rows_zeroes_only_those_rows():
    config = ModelConfig(vocab_size=11, embedding_size=4, rnn_size=6)
    model = NumpyCharRNN(config, init_weights(config, 0), OptimConfig())
    rng = np.random.default_rng(0)
    h, c = (rng.normal(size=(2, 5, 6)).astype(np.float32) for _ in range(2))
    rows = np.array([True, False, False, True, False])
    out_h, out_c = model.state_to_numpy(zero_rows(model, model.state_from_numpy(h, c), rows))
    assert (out_h[:, rows] == 0).all() and (out_c[:, rows] == 0).all()
    assert (out_h[:, ~rows] == h[:, ~rows]).all() and (out_c[:, ~rows] == c[:, ~rows]).all()


def test_state_reset_refuses_one_and_above():
    with pytest.raises(CharRnnError, match=r"--state-reset 1.0 must be in \[0, 1\)"):
        TrainConfig(state_reset=1.0)


def test_state_reset_changes_training_and_resumes_exactly(corpus, tmp_path):
    common = [*TINY, "--num-epochs", "2", "--sample-length", "0", "--state-reset", "0.3"]
    ok(_train(["--text-path", str(corpus), *common, "--checkpoint-path", str(tmp_path / "a"),
               "--log-path", str(tmp_path / "a.log")]))
    ok(_train(["--text-path", str(corpus), *common, "--checkpoint-path", str(tmp_path / "b"),
               "--log-path", str(tmp_path / "b.log"), "--max-steps", "13"]))
    ok(_train(["--restore", "--checkpoint-path", str(tmp_path / "b")]))
    ok(_train(["--text-path", str(corpus), *TINY, "--num-epochs", "2", "--sample-length", "0",
               "--checkpoint-path", str(tmp_path / "c"), "--log-path", str(tmp_path / "c.log")]))
    straight, resumed, plain = (
        [r["val/loss"] for r in _epochs(tmp_path / f"{n}.log") if r["complete"]]
        for n in "abc")
    assert resumed == pytest.approx(straight, abs=1e-6)
    assert abs(straight[-1] - plain[-1]) > 1e-4  # the resets did something
    refused = _train(["--restore", "--checkpoint-path", str(tmp_path / "a"),
                      "--state-reset", "0.5", "--num-epochs", "3"])  # the run's own setting
    assert refused["code"] != 0 and "--state-reset" in refused["stderr"]


def test_window_loss_is_each_window_from_zeros():
    config = ModelConfig(vocab_size=11, embedding_size=4, rnn_size=6)
    model = NumpyCharRNN(config, init_weights(config, 0), OptimConfig())
    ids = np.random.default_rng(1).integers(1, 11, 53).astype(np.int32)
    by_hand = []
    for k in range(5):  # (53 - 1) // 10 windows; the last two characters are left over
        x, y = ids[k * 10:(k + 1) * 10], ids[k * 10 + 1:(k + 1) * 10 + 1]
        loss, _ = model.eval_step(x[None], y[None], model.zero_state(1))
        by_hand.append(loss)
    assert window_loss(model, ids, 10, rows_per_batch=2) == pytest.approx(np.mean(by_hand),
                                                                          abs=1e-6)
    assert window_loss(model, ids[:10], 10) is None


def test_val_window_is_logged_beside_the_val_loss(corpus, tmp_path):
    result = ok(_train(["--text-path", str(corpus), *TINY, "--num-epochs", "1",
                        "--val-fraction", "0.3", "--val-window", "50",
                        "--checkpoint-path", str(tmp_path / "ck"),
                        "--log-path", str(tmp_path / "run.log")]))
    assert "from zeros in 50-char windows" in result["stderr"]
    (epoch,) = _epochs(tmp_path / "run.log")
    assert epoch["val/window_loss"] > 0
