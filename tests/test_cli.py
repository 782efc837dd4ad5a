"""The command line end to end, and bad input, for every framework of this environment.

Parametrised over the registry: a new framework joins by registering. Cases run
in-process when this process can import the framework, else in one worker
process under the framework's own environment variables (Keras backends).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from charrnn.common import registry
from charrnn.common.config import ModelConfig
from charrnn.common.text import Vocab
from charrnn.common.weights import init_weights, load_portable, save_portable
from tests.conftest import ROOT, TEXT, TINY, framework_params, ok, run


def portable_file(path, text=TEXT, seed=0, cell="lstm"):
    """A small untrained portable model with the corpus vocabulary of `text`."""
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=8, rnn_size=16, cell=cell)
    save_portable(path, init_weights(config, seed), config, vocab, framework="numpy")
    return path


@pytest.mark.parametrize("name", framework_params())
def test_train_restore_generate_repl_export(name, corpus, tmp_path):
    ck, log = str(tmp_path / "ck"), str(tmp_path / "logs" / "run.log")
    straight = str(tmp_path / "straight")
    other = portable_file(tmp_path / "other.safetensors")
    train = ["train", "--text-path", str(corpus), *TINY, "--log-path", log]
    results = run(name, [
        # 40 steps end mid-epoch 2 (29 batches per epoch); restore finishes epoch 3.
        {"argv": [*train, "--num-epochs", "3", "--max-steps", "40", "--checkpoint-path", ck]},
        {"argv": [*train, "--num-epochs", "3", "--restore", "--checkpoint-path", ck]},
        {"argv": [*train, "--num-epochs", "3", "--checkpoint-path", straight,
                  "--log-path", str(tmp_path / "logs" / "straight.log")]},
        {"argv": ["generate", "--checkpoint-path", ck, "--seed", "First", "--length", "50",
                  "--random-seed", "1"]},
        {"argv": ["repl", "--checkpoint-path", ck, "--length", "20"],
         "stdin": "All:\n:temperature 0\n:bogus 1\nFirst\n"},
        {"argv": ["export", "--checkpoint-path", ck,
                  "--output", str(tmp_path / "out.safetensors")]},
        {"argv": ["generate", "--checkpoint-path", str(other), "--seed", "All", "--length", "30",
                  "--num-samples", "2", "--output", str(tmp_path / "gen.txt")]},
    ], tmp_path)
    for result in results:
        ok(result)
    records = [json.loads(line) for line in open(tmp_path / "logs" / "run.jsonl")]
    epochs = [r for r in records if r["kind"] == "epoch"]
    batches_per_epoch = records[0]["train_batches"]
    assert [(r["epoch"], r["complete"]) for r in epochs] == [(1, True), (2, False), (2, True),
                                                             (3, True)]
    assert all(np.isfinite(r["val/loss"]) and r["duration_s"] > 0 for r in epochs)
    # Interrupted-and-restored equals straight through: same weights, same loss.
    resumed = load_portable(tmp_path / "ck" / "model.safetensors")
    direct = load_portable(tmp_path / "straight" / "model.safetensors")
    for key in direct.weights:
        np.testing.assert_allclose(resumed.weights[key], direct.weights[key], atol=1e-5,
                                   err_msg=key)
    assert resumed.metadata["step"] == direct.metadata["step"] == str(3 * batches_per_epoch)
    generated = results[3]["stdout"]
    assert generated.startswith("First") and len(generated) == len("First") + 50 + 1
    repl = results[4]["stdout"]  # two seeds, each echoed and completed by 20 characters
    assert len(repl) == len("All:") + 21 + len("First") + 21
    assert repl.startswith("All:") and repl[25:].startswith("First") and repl.endswith("\n")
    assert "unknown command" in results[4]["stderr"]
    exported = load_portable(tmp_path / "out.safetensors")
    for key in exported.weights:  # native save -> load -> export is lossless
        np.testing.assert_array_equal(exported.weights[key], resumed.weights[key], err_msg=key)
    shown = (tmp_path / "gen.txt").read_text()
    assert shown == results[6]["stdout"]
    assert shown.startswith("--- sample 1 ---\nAll") and "\n--- sample 2 ---\nAll" in shown


# The other cells with the other optimisers and the penalties (SPEC sections 8 and 9).
CELL_RUNS = {"gru": ["--cell", "gru", "--optimizer", "rmsprop", "--l2", "1e-3"],
             "rnn": ["--cell", "rnn", "--optimizer", "sgd", "--momentum", "0.9",
                     "--learning-rate", "0.05", "--l1", "1e-4"]}


@pytest.mark.parametrize("cell", list(CELL_RUNS))
@pytest.mark.parametrize("name", framework_params())
def test_other_cells_train_restore_and_generate(name, cell, corpus, tmp_path):
    """Train a GRU or RNN with RMSprop or SGD and penalties, interrupt, restore (the optimiser
    state resumes exactly), generate; and generate from the same cell made elsewhere."""
    ck, straight = str(tmp_path / "ck"), str(tmp_path / "straight")
    other = portable_file(tmp_path / "other.safetensors", cell=cell)
    train = ["train", "--text-path", str(corpus), *TINY, "--num-epochs", "2",
             "--log-path", str(tmp_path / "run.log"), *CELL_RUNS[cell]]
    results = run(name, [
        {"argv": [*train, "--max-steps", "20", "--checkpoint-path", ck]},
        {"argv": [*train, "--restore", "--checkpoint-path", ck]},  # the file's cell
        {"argv": [*train, "--checkpoint-path", straight]},
        {"argv": ["generate", "--checkpoint-path", ck, "--seed", "First", "--length", "30",
                  "--random-seed", "1"]},
        {"argv": ["generate", "--checkpoint-path", str(other), "--seed", "All", "--length",
                  "30", "--random-seed", "1"]},
        {"argv": [*train, "--restore", "--checkpoint-path", ck, "--cell", "lstm"]},
    ], tmp_path)
    for result in results[:5]:
        ok(result)
    resumed = load_portable(tmp_path / "ck" / "model.safetensors")
    direct = load_portable(tmp_path / "straight" / "model.safetensors")
    assert resumed.config.cell == direct.config.cell == cell
    for key in direct.weights:
        np.testing.assert_allclose(resumed.weights[key], direct.weights[key], atol=1e-5,
                                   err_msg=key)
    assert results[3]["stdout"].startswith("First") and len(results[3]["stdout"]) == 5 + 30 + 1
    # The NumPy reference continues the same seed with the same characters.
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    from tests.cli_cases import run_cases
    reference = run_cases(NumpyCharRNN, [{"argv": results[4]["argv"]}])[0]
    assert results[4]["stdout"] == ok(reference)["stdout"]
    assert results[5]["code"] == 2 and f"(--cell {cell})" in results[5]["stderr"]


def bad_input_cases(tmp_path, corpus):
    """(argv, what the one-line error must mention) for each bad input of the issue."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 50)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    good = portable_file(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:300])
    import safetensors.numpy
    weights = load_portable(good).weights
    no_meta = tmp_path / "nometa.safetensors"
    safetensors.numpy.save_file(weights, str(no_meta))
    wrong = tmp_path / "wrong.safetensors"
    meta = load_portable(good).metadata
    safetensors.numpy.save_file(dict(weights, **{"dense.w": np.zeros((3, 3), np.float32)}),
                                str(wrong), metadata=meta)
    gen = ["generate", "--length", "5", "--seed", "All"]
    train = ["train", *TINY, "--checkpoint-path", str(tmp_path / "never-written"),
             "--log-path", str(tmp_path / "bad.log")]
    return [
        ([*train, "--text-path", str(tmp_path / "missing.txt")], "missing.txt"),
        ([*train, "--text-path", str(empty)], "empty"),
        ([*train, "--text-path", str(latin1)], "UTF-8"),
        ([*train, "--text-path", str(short)], "too short"),
        (["generate", "--checkpoint-path", str(good), "--seed", "KING\u20ac"], "vocabulary"),
        ([*gen, "--checkpoint-path", str(truncated)], "truncated.safetensors"),
        ([*gen, "--checkpoint-path", str(no_meta)], "metadata"),
        ([*gen, "--checkpoint-path", str(wrong)], "shape"),
        ([*gen, "--checkpoint-path", str(tmp_path / "nothing")], "nothing"),
        ([*train, "--text-path", str(corpus), "--restore", str(tmp_path / "nothing")], "nothing"),
        ([*train, "--text-path", str(corpus), "--seq-len", "0"], "--seq-len"),
        ([*train, "--text-path", str(corpus), "--batch-size", "-3"], "--batch-size"),
        ([*gen, "--checkpoint-path", str(good), "--top-p", "0"], "--top-p"),
        ([*train, "--text-path", str(corpus), "--cell", "lstmx"], "--cell"),
        ([*train, "--text-path", str(corpus), "--l2", "-1e-5"], "--l2"),
        ([*train, "--text-path", str(corpus), "--momentum", "0.9"], "--momentum"),
        ([*train, "--text-path", str(corpus), "--optimizer", "sgd", "--decay-rate", "0.9"],
         "--decay-rate"),
        ([*train, "--text-path", str(corpus), "--cell", "lstm", "--init-from",
          str(portable_file(tmp_path / "gru.safetensors", cell="gru"))], "gru"),
    ]


@pytest.mark.parametrize("name", framework_params())
def test_bad_input_is_one_line_and_nonzero(name, corpus, tmp_path):
    cases = bad_input_cases(tmp_path, corpus)
    # A corrupt native checkpoint of this framework: train one step, then truncate its files.
    # Two more runs, whose texts then go missing and change.
    ck, ck_mine, ck_gone = tmp_path / "ck", tmp_path / "ck-mine", tmp_path / "ck-gone"
    mine, gone = tmp_path / "mine.txt", tmp_path / "gone.txt"
    mine.write_text(TEXT, encoding="utf-8")
    gone.write_text(TEXT, encoding="utf-8")
    setup = [{"argv": ["train", *TINY, "--text-path", str(text), "--max-steps", "1",
                       "--checkpoint-path", str(path), "--log-path", str(tmp_path / "ok.log")]}
             for text, path in ((corpus, ck), (mine, ck_mine), (gone, ck_gone))]
    for result in run(name, setup, tmp_path):
        ok(result)
    gone.unlink()  # the text of a run moved away, or edited
    mine.write_text(TEXT + "\u00e9t\u00e9 \u20ac", encoding="utf-8")
    for path in (ck / "native").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    cases.append((["train", *TINY, "--text-path", str(corpus), "--restore",
                   "--checkpoint-path", str(ck), "--log-path", str(tmp_path / "r.log")],
                  "native"))
    # A resume refuses every run flag that differs from the checkpoint's (one given at its
    # default value too), --init-from beside it, and a text that is gone or changed.
    restore = ["train", "--restore", str(ck), "--log-path", str(tmp_path / "r.log")]
    for flag, value in (("--batch-size", "8"), ("--seq-len", "64"), ("--rnn-size", "32"),
                        ("--learning-rate", "0.01"), ("--optimizer", "sgd"),
                        ("--val-fraction", "0.2"), ("--random-seed", "1"),
                        ("--drop-rate", "0.5"), ("--num-layers", "1"),
                        ("--precision", "bf16-mixed")):
        cases.append(([*restore, flag, value], f"{flag} {value} differs from the run"))
    cases += [
        ([*restore, "--vocab", "corpus"], "--vocab corpus"),
        ([*restore, "--init-from", str(tmp_path / "good.safetensors")], "give one of them"),
        ([*restore, "--text-path", str(mine)], "not the text"),
        (["train", "--restore", str(ck_gone)], f"{gone} is missing"),
        (["train", "--restore", str(ck_mine)], "2 of its distinct characters are outside"),
        (["train", *TINY, "--init-from", str(tmp_path / "good.safetensors"), "--rnn-size", "32",
          "--checkpoint-path", str(tmp_path / "new")], "--rnn-size 16, not the --rnn-size 32"),
    ]
    results = run(name, [{"argv": argv} for argv, _ in cases], tmp_path)
    for (argv, mention), result in zip(cases, results):
        errors = [line for line in result["stderr"].splitlines() if "error" in line.lower()]
        assert result["code"] != 0, f"{argv} exited 0"
        assert len(errors) == 1, f"{argv}: {result['stderr']}"
        assert mention in errors[0], f"{argv}: {errors[0]!r} should mention {mention!r}"
        assert "Traceback" not in result["stderr"]


@pytest.mark.parametrize("script", ["numpy_model.py", "pytorch_model.py"])
def test_real_process_error_is_one_line(script, tmp_path):
    """The same checks through a real process: exit status and stderr, no traceback."""
    entry = next(e for e in registry.FRAMEWORKS.values() if e.script.name == script)
    if not entry.python().exists():
        pytest.skip("environment not set up")
    proc = subprocess.run([sys.executable, str(ROOT / script), "train", "--text-path",
                           str(tmp_path / "missing.txt")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    missing = tmp_path / "missing.txt"
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: file not found"]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    """SIGINT mid-training: a checkpoint at the current batch, exit status 130, no traceback."""
    import signal
    import time
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "numpy_model.py"), "train", "--text-path", str(corpus),
         *TINY, "--num-epochs", "100000", "--log-every", "1", "--sample-length", "0",
         "--checkpoint-path", str(tmp_path / "ck"), "--log-path", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "step 30:" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    trainer = json.loads((tmp_path / "ck" / "trainer.json").read_text())
    assert trainer["progress"]["step"] >= 30


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    from tests.cli_cases import run_cases
    ck = tmp_path / "ck"
    train = ["train", "--text-path", str(corpus), *TINY, "--checkpoint-path", str(ck),
             "--log-path", str(tmp_path / "run.log")]
    first = ok(run_cases(NumpyCharRNN, [{"argv": [*train, "--num-epochs", "1"]}])[0])
    assert first["code"] == 0
    saved = (ck / "model.safetensors").read_bytes()
    # Continued (from its weights: a resume keeps the learning rate) at a rate that diverges.
    result = run_cases(NumpyCharRNN, [{"argv": [*train, "--num-epochs", "3", "--init-from",
                                                str(ck / "model.safetensors"),
                                                "--learning-rate", "1e30"]}])[0]
    assert result["code"] == 2
    assert "diverged" in result["stderr"] and "Traceback" not in result["stderr"]
    assert (ck / "model.safetensors").read_bytes() == saved


def test_repl_confirms_settings_and_honours_num_samples(tmp_path):
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    from tests.cli_cases import run_cases
    result = ok(run_cases(NumpyCharRNN, [{
        "argv": ["repl", "--length", "10", "--num-samples", "2", "--random-seed", "1"],
        "stdin": "KING\n:top_n 5\n:num_samples 1\n:temperature 0\nKING\n:length x\n"}])[0])
    assert result["stdout"].count("--- sample ") == 2 and "--- sample 2 ---\nKING" in (
        result["stdout"])
    assert result["stdout"].endswith("\nKING" + result["stdout"].rsplit("KING", 1)[1])
    assert len(result["stdout"].rsplit("\n", 2)[1]) == len("KING") + 10  # one, streamed
    err = result["stderr"].splitlines()
    assert ["top_k = 5", "num_samples = 1", "temperature = 0.0"] == [
        line for line in err if " = " in line]
    assert "error: :length needs an int" in err


def test_repl_edits_lines_and_recalls_history_at_a_terminal(tmp_path):
    """At a terminal the repl reads through readline: the Up arrow brings the last line
    back (it printed ^[[A before), and the history is kept in ~/.charrnn_history."""
    import os
    import select
    import time
    # A pseudo-terminal for the repl's stdin, stdout and stderr; subprocess forks and
    # execs at once (pty.fork in a worker with framework threads can deadlock).
    fd, terminal = os.openpty()
    proc = subprocess.Popen([sys.executable, str(ROOT / "numpy_model.py"), "repl",
                             "--length", "5", "--temperature", "0"],
                            stdin=terminal, stdout=terminal, stderr=terminal,
                            env={**os.environ, "HOME": str(tmp_path)}, start_new_session=True)
    os.close(terminal)
    output = b""

    def prompts(count: int, timeout: float = 120) -> None:
        """Read until the repl has shown its prompt `count` times."""
        nonlocal output
        deadline = time.time() + timeout
        while output.count(b"> ") < count and time.time() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    output += os.read(fd, 4096)
                except OSError:  # the child is gone
                    return

    prompts(1)
    os.write(fd, b"KING\r")
    prompts(2)
    os.write(fd, b"\x1b[A\r")  # Up arrow, enter: KING again
    prompts(3)
    os.write(fd, b":quit\r")
    proc.wait(timeout=60)
    os.close(fd)
    text = output.decode(errors="replace")
    assert "^[[A" not in text
    completions = [line for line in text.replace("\r", "").splitlines()
                   if line.startswith("KING") and len(line) == len("KING") + 5]
    assert len(completions) == 2 and completions[0] == completions[1], text
    assert "KING" in (tmp_path / ".charrnn_history").read_text()
