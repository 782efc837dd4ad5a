"""Faults a long run meets, for every framework of this environment at tiny sizes.

- kill -9 at a random moment with --checkpoint-every 5 loses at most 5 steps, and the
  checkpoint it leaves resumes;
- SIGTERM (preemption) and SIGHUP save at the current batch and exit 143 / 129 with one
  line; --restore then ends with the same weights as a run never stopped;
- a full disk (a small tmpfs, when this process may mount one) is one line, and the
  previous checkpoint stays loadable;
- a second run writing the same checkpoint directory is refused.

Signals need real processes: each framework runs its own script in its own environment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn.common import registry
from charrnn.common.checkpoint import checkpoint_lock, load_checkpoint
from charrnn.common.weights import load_portable
from tests.conftest import TINY, framework_params, ok, run

# 29 batches each on the test corpus: long enough to stop mid-run. One thread: a tiny
# model gains nothing from two, and two processes' spinning OpenMP pools on a loaded
# 2-core machine slow each step a hundredfold.
NUM_EPOCHS = 20


def start(name: str, args: list[str], stderr=subprocess.PIPE) -> subprocess.Popen:
    """The framework's script, `train` with `args`, in its own environment (`stderr`:
    subprocess.STDOUT puts both streams on one pipe, as `2>&1 |` does)."""
    entry = registry.FRAMEWORKS[name]
    if not entry.python().exists():
        pytest.skip(f"{entry.python()} does not exist (run make setup)")
    return subprocess.Popen([str(entry.python()), str(entry.script), "train", *args],
                            env=entry.process_env(), stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


def read_log(log: Path) -> tuple[int, list[int]]:
    """(runs started in `log`, the steps the latest one has logged; --log-every 1)."""
    path = log.with_suffix(".jsonl")
    if not path.exists():
        return 0, []
    runs, steps = 0, []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line being written
            continue
        if record.get("kind") == "header":
            runs, steps = runs + 1, []
        elif record.get("kind") == "step":
            steps.append(record["step"])
    return runs, steps


def logged_steps(log: Path) -> list[int]:
    return read_log(log)[1]


def signal_after(name: str, args: list[str], log: Path, step: int,
                 sig: int) -> tuple[int, str]:
    """Start `train` with `args`, send `sig` once this new run has logged `step`; its exit
    code and stderr.

    Only the steps logged after this run's own header count: a restored run's log
    still holds the earlier run's steps, and a signal before the loop starts would
    find the default handler.
    """
    runs_before = read_log(log)[0]
    proc = start(name, args)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        runs, steps = read_log(log)
        if runs > runs_before and any(s >= step for s in steps):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def trained_step(ck: Path) -> int:
    return json.loads((ck / "trainer.json").read_text())["progress"]["step"]


@pytest.mark.parametrize("name", framework_params())
def test_kill_then_sigterm_then_restore_is_exact(name, corpus, tmp_path):
    ck, log = tmp_path / "ck", tmp_path / "logs" / "run.log"
    train = ["--text-path", str(corpus), *TINY, "--sample-length", "0", "--log-every", "1",
             "--threads", "1", "--num-epochs", str(NUM_EPOCHS), "--checkpoint-path", str(ck),
             "--log-path", str(log)]
    rng = random.Random(name)

    # kill -9 at a random moment: the last save (every 5 steps, and at an epoch's end,
    # step 29) is at most 5 steps behind.
    code, _ = signal_after(name, [*train, "--checkpoint-every", "5"], log,
                           rng.randint(8, 40), signal.SIGKILL)
    assert code == -signal.SIGKILL
    last = max(logged_steps(log))
    saved = trained_step(ck)
    assert (saved % 5 == 0 or saved % 29 == 0) and last - saved <= 5, (last, saved)

    # A bare --restore resumes the run as it was (text, shapes, --checkpoint-every, log):
    # only --threads, this machine's, is given again. SIGTERM then saves at the current
    # batch and exits 143 with one line.
    bare = ["--restore", str(ck), "--threads", "1"]
    code, err = signal_after(name, bare, log, saved + rng.randint(3, 30), signal.SIGTERM)
    assert code == 143, err
    assert err.strip().splitlines()[-1].startswith(f"stopped by SIGTERM: checkpoint saved to {ck}")
    assert "Traceback" not in err
    assert trained_step(ck) == max(logged_steps(log))

    # Restored to the end, it matches a run that was never stopped: every step's loss
    # (the steps a kill -9 lost were trained again, to the same loss) and the weights.
    straight_ck, straight_log = tmp_path / "straight", tmp_path / "logs" / "straight.log"
    for args in (bare, [*train[:-4], "--checkpoint-path", str(straight_ck),
                        "--log-path", str(straight_log)]):
        proc = start(name, args)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    expected = step_losses(straight_log)
    assert sorted(expected) == list(range(1, NUM_EPOCHS * 29 + 1))
    for step, loss in step_losses(log, every=True):
        assert abs(loss - expected[step]) < 1e-5, (step, loss, expected[step])
    a = load_portable(ck / "model.safetensors")
    b = load_portable(straight_ck / "model.safetensors")
    assert a.metadata["step"] == b.metadata["step"] == str(NUM_EPOCHS * 29)
    for key in b.weights:
        np.testing.assert_allclose(a.weights[key], b.weights[key], atol=1e-5, err_msg=key)


def step_losses(log: Path, every: bool = False):
    """{step: loss} of a log's step records; `every`: [(step, loss), ...] of all of them,
    in order, the steps trained twice included."""
    records = [json.loads(line) for line in log.with_suffix(".jsonl").read_text().splitlines()]
    pairs = [(r["step"], r["train/loss"]) for r in records if r["kind"] == "step"]
    return pairs if every else dict(pairs)


@pytest.mark.parametrize("name", framework_params())
def test_closed_output_keeps_training(name, corpus, tmp_path):
    """`train ... 2>&1 | head -1`: the reader leaves after the first line; the run goes on
    to its end, saves, exits 0, and its log file has every line."""
    ck, log = tmp_path / "ck", tmp_path / "run.log"
    proc = start(name, ["--text-path", str(corpus), *TINY, "--threads", "1", "--num-epochs",
                        "1", "--log-every", "1", "--checkpoint-path", str(ck),
                        "--log-path", str(log)], stderr=subprocess.STDOUT)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=600) == 0
    assert trained_step(ck) == 29
    lines = log.read_text()
    assert "stderr is closed" in lines and "done: 29 steps" in lines


@pytest.mark.parametrize("name", framework_params()[:1])
def test_sighup_saves_and_exits_129(name, corpus, tmp_path):
    ck, log = tmp_path / "ck", tmp_path / "run.log"
    args = ["--text-path", str(corpus), *TINY, "--sample-length", "0", "--log-every", "1",
            "--num-epochs", "1000", "--checkpoint-path", str(ck), "--log-path", str(log)]
    code, err = signal_after(name, args, log, 5, signal.SIGHUP)
    assert code == 129, err
    assert err.strip().splitlines()[-1].startswith(f"stopped by SIGHUP: checkpoint saved to {ck}")
    assert trained_step(ck) == max(logged_steps(log))


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 4 MiB tmpfs (root only); skipped where it cannot be mounted."""
    path = tmp_path_factory.mktemp("small_disk")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its file system is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("name", framework_params())
def test_full_disk_is_one_line_and_keeps_the_checkpoint(name, corpus, small_disk, tmp_path):
    ck = small_disk / f"{registry.FRAMEWORKS[name].slug}-ck"
    train = ["train", "--text-path", str(corpus), *TINY, "--sample-length", "0",
             "--checkpoint-path", str(ck), "--log-path", str(tmp_path / "run.log")]
    ok(run(name, [{"argv": [*train, "--max-steps", "3"]}], tmp_path)[0])
    filler = fill(small_disk)
    try:
        results = run(name, [
            {"argv": [*train, "--max-steps", "6", "--restore"]},
            {"argv": ["export", "--checkpoint-path", str(ck),
                      "--output", str(small_disk / "out.safetensors")]},
        ], tmp_path)
    finally:
        filler.unlink()
    for result in results:
        errors = result["stderr"].strip().splitlines()
        assert result["code"] != 0
        assert "Traceback" not in result["stderr"]
        assert errors[-1].startswith("error: cannot write") and "No space left" in errors[-1], \
            result["stderr"]
    # Nothing half-written is left, and the previous checkpoint loads.
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([ck.name, f"{ck.name}.lock"])
    checkpoint = load_checkpoint(ck, json.loads((ck / "trainer.json").read_text())["framework"])
    assert checkpoint.progress.step == 3
    shutil.rmtree(ck)
    (small_disk / f"{ck.name}.lock").unlink()


@pytest.mark.parametrize("name", framework_params())
def test_second_writer_is_refused(name, corpus, tmp_path):
    ck = tmp_path / "ck"
    with checkpoint_lock(ck):  # this process stands in for the first run
        result = run(name, [{"argv": ["train", "--text-path", str(corpus), *TINY,
                                      "--checkpoint-path", str(ck), "--log-path",
                                      str(tmp_path / "run.log")]}], tmp_path)[0]
    assert result["code"] == 2
    assert result["stderr"].strip().splitlines() == [
        f"error: {ck}: another run (pid {os.getpid()}) is writing this checkpoint directory; "
        "wait for it to finish or use another --checkpoint-path"]
    assert not ck.exists()
