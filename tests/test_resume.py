"""What a checkpoint records and what a resume accepts (docs/SPEC.md section 10,
"Resuming"), on the NumPy reference in this process: the rules live in common/, so one
framework proves them; test_faults and test_cli run the scenario in every framework.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from charrnn.common.cli import flags_given, parse_args, to_argv
from charrnn.common.config import GenerateConfig, TrainConfig
from charrnn.common.generate import _trained_for
from charrnn.common.train import train
from charrnn.common.weights import load_portable
from charrnn.frameworks.numpy_model import NumpyCharRNN
from tests.cli_cases import run_cases
from tests.conftest import TEXT, TINY, ok


def test_flags_given_sees_what_was_typed():
    assert flags_given(["train"]) == frozenset()
    given = flags_given(["train", "--seq-len=64", "--rnn", "32", "--restore", "--threads", "1"])
    assert given == {"seq_len", "rnn_size", "restore", "threads"}  # a default value counts too


def test_to_argv_gives_back_the_config():
    assert to_argv(TrainConfig()) == [] and to_argv(GenerateConfig()) == []
    train = TrainConfig(rnn_size=16, cell="gru", optimizer="sgd", momentum=0.9, l2=1e-5,
                        val_fraction=0.0, max_steps=7, checkpoint_minutes=0.0, device="cpu")
    argv = to_argv(train)
    assert argv[:4] == ["--rnn-size", "16", "--cell", "gru"]  # field order, defaults left out
    assert "0" in argv and "1e-05" in argv  # floats as typed: 0.0 -> 0, exact otherwise
    assert parse_args(["train", *argv], "test")[1] == train
    generate = GenerateConfig(cold_start=True, temperature=0.5, num_samples=4, length=10)
    assert parse_args(["generate", *to_argv(generate)], "test")[1] == generate


def _train(argv: list[str]) -> dict:
    return run_cases(NumpyCharRNN, [{"argv": ["train", *argv]}])[0]


def test_checkpoint_records_the_resolved_run(corpus, tmp_path):
    ck = tmp_path / "ck"
    ok(_train(["--text-path", str(corpus), *TINY, "--optimizer", "rmsprop", "--max-steps", "3",
               "--checkpoint-path", str(ck), "--log-path", str(tmp_path / "run.log")]))
    trainer = json.loads((ck / "trainer.json").read_text())
    run, text = trainer["train_config"], trainer["text"]
    assert trainer["format"] == 2
    assert run["text_path"] == text["path"] == str(corpus.resolve())
    assert text["bytes"] == len(TEXT.encode()) and len(text["sha256"]) == 64
    assert (run["seq_len"], run["batch_size"], run["rnn_size"], run["embedding_size"]) == (
        16, 4, 16, 8)
    assert (run["cell"], run["optimizer"], run["decay_rate"], run["momentum"]) == (
        "lstm", "rmsprop", 0.95, None)
    assert run["log_path"] == str((tmp_path / "run.log").resolve())


def test_moved_text_resumes_and_python_api_resumes_bare(corpus, tmp_path):
    """The text moved: --text-path names the new place (same SHA-256) and the run goes on
    there, recorded for the next resume; a TrainConfig with only `restore` set is a bare
    resume too."""
    ck, log = tmp_path / "ck", tmp_path / "run.log"
    mine = tmp_path / "mine.txt"
    mine.write_text(corpus.read_text())
    # The linear schedule too: each update's rate follows from the step, so a resume keeps it.
    common = ["--num-epochs", "2", "--sample-length", "0", "--lr-schedule", "linear"]
    ok(_train(["--text-path", str(mine), *TINY, *common, "--max-steps", "10",
               "--checkpoint-path", str(ck), "--log-path", str(log)]))
    moved = mine.rename(tmp_path / "moved.txt")
    resumed = ok(_train(["--restore", str(ck), "--text-path", str(moved), "--max-steps", "40"]))
    assert f"resuming {ck} at epoch 1 of 2, batch 11 of 29 (after 10 steps)" in resumed["stderr"]
    assert json.loads((ck / "trainer.json").read_text())["text"]["path"] == str(moved.resolve())
    progress = train(NumpyCharRNN, TrainConfig(restore=str(ck)))
    assert (progress.epoch, progress.step) == (2, 58)

    straight = tmp_path / "straight"
    ok(_train(["--text-path", str(corpus), *TINY, *common, "--checkpoint-path", str(straight),
               "--log-path", str(tmp_path / "straight.log")]))
    a, b = (load_portable(d / "model.safetensors").weights for d in (ck, straight))
    for key in b:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)


def test_format_1_checkpoint_is_refused_with_the_way_on(corpus, tmp_path):
    ck = tmp_path / "ck"
    ok(_train(["--text-path", str(corpus), *TINY, "--max-steps", "2", "--sample-length", "0",
               "--checkpoint-path", str(ck), "--log-path", str(tmp_path / "run.log")]))
    trainer = json.loads((ck / "trainer.json").read_text())
    del trainer["format"], trainer["text"]
    (ck / "trainer.json").write_text(json.dumps(trainer))
    result = _train(["--restore", str(ck)])
    assert result["code"] == 2
    assert result["stderr"].strip().splitlines() == [
        f"error: {ck}: written before checkpoints recorded their run (text, shapes, "
        f"optimiser), so it cannot be resumed exactly; start a new run from its weights with "
        f"--init-from {ck / 'model.safetensors'}"]


def test_finished_run_says_there_is_nothing_to_train(corpus, tmp_path):
    ck = tmp_path / "ck"
    ok(_train(["--text-path", str(corpus), *TINY, "--num-epochs", "1", "--sample-length", "0",
               "--checkpoint-path", str(ck), "--log-path", str(tmp_path / "run.log")]))
    result = ok(_train(["--restore", str(ck)]))
    assert "nothing to train: the run has done its 1 epochs" in result["stderr"]


def test_new_run_into_a_checkpoint_is_refused_and_leaves_it_whole(corpus, tmp_path):
    """Without --restore, a path that holds a run is refused before anything trains: the
    new run's first save would have replaced that run's weights."""
    ck = tmp_path / "ck"
    args = ["--text-path", str(corpus), *TINY, "--max-steps", "3", "--sample-length", "0",
            "--checkpoint-path", str(ck), "--log-path", str(tmp_path / "run.log")]
    ok(_train(args))
    before = {p.name: p.read_bytes() for p in ck.iterdir() if p.is_file()}
    expected = [f"error: {ck} already holds a checkpoint: continue that run with --restore "
                f"{ck}, or give another --checkpoint-path (delete the directory to start over)"]
    result = _train([*args, "--rnn-size", "8"])
    assert result["code"] == 2 and result["stderr"].strip().splitlines() == expected
    assert {p.name: p.read_bytes() for p in ck.iterdir() if p.is_file()} == before
    ck.rename(tmp_path / "ck.old")  # a save that died between its two renames
    result = _train(args)
    assert result["code"] == 2 and result["stderr"].strip().splitlines() == expected
    (tmp_path / "ck.old").rename(ck)
    assert "resuming" in ok(_train(["--restore", str(ck), "--max-steps", "4"]))["stderr"]


@pytest.mark.parametrize(("meta", "shown"), [
    ({"epoch": "0", "batch": "11", "step": "11"}, "11 batches (step 11)"),
    ({"epoch": "1", "batch": "11", "step": "40"}, "1 epoch and 11 batches (step 40)"),
    ({"epoch": "3", "batch": "0", "step": "87"}, "3 epochs (step 87)"),
    ({"epoch": "2", "step": "58"}, "2 epochs (step 58)"),
])
def test_generate_says_how_long_a_model_trained(meta, shown):
    assert _trained_for(meta) == shown
