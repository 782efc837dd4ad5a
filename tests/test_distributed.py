"""Data-parallel training (docs/SPEC.md section 11), on this one CPU machine.

For every framework that trains data-parallel: two processes train the same steps as
one (every step's loss and the final weights within 1e-5), and a checkpoint written by
two processes continues exactly in one, and the reverse. A world that does not add up is
one line on every rank and a non-zero exit, never a hang; a framework without
data-parallel training refuses in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn.common import registry
from charrnn.common.distributed import World, world_from_env
from charrnn.common.errors import CharRnnError
from charrnn.common.launch import free_port, world_env
from charrnn.common.paths import ROOT
from charrnn.common.weights import load_portable
from tests.conftest import TINY, in_this_env

STEPS, HALF = 20, 10
TOLERANCE = 1e-5


def data_parallel_params():
    return [pytest.param(name, id=name, marks=[pytest.mark.xdist_group(name)])
            for name, entry in registry.FRAMEWORKS.items()
            if entry.data_parallel and in_this_env(name)]


def _python(entry: registry.Entry) -> str:
    if not entry.python().exists():
        pytest.skip(f"{entry.python()} does not exist (run make setup)")
    return str(entry.python())


def train(name: str, nproc: int, args: list[str], launcher: str = "common") -> str:
    """`train` with `args` in `nproc` processes (python -m charrnn.common.launch, or torchrun);
    returns stderr, after asserting success."""
    entry = registry.FRAMEWORKS[name]
    python = _python(entry)
    if nproc == 1:
        command = [python, str(entry.script), "train", *args]
    elif launcher == "torchrun":
        command = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(nproc), str(entry.script), "train", *args]
    else:
        command = [python, "-m", "charrnn.common.launch", "--nproc", str(nproc), str(entry.script),
                   "train", *args]
    proc = subprocess.run(command, env=entry.process_env(), capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stderr


def step_losses(log: Path) -> dict[int, float]:
    """{step: loss} of every step record in the log (restores continue the numbering)."""
    losses = {}
    for line in log.with_suffix(".jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "step":
            losses[record["step"]] = record["train/loss"]
    return losses


def headers(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.with_suffix(".jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "header"]


@pytest.mark.parametrize("name", data_parallel_params())
def test_two_processes_train_as_one(name, corpus, tmp_path):
    def args(tag: str, steps: int, restore: bool = False) -> list[str]:
        return [*TINY, "--text-path", str(corpus), "--checkpoint-path", str(tmp_path / tag),
                "--log-path", str(tmp_path / f"{tag}.log"), "--max-steps", str(steps),
                "--log-every", "1", "--threads", "1", "--checkpoint-minutes", "0",
                "--sample-length", "0", *(["--restore"] if restore else [])]

    launcher = "torchrun" if name == "pytorch" else "common"
    train(name, 1, args("one", STEPS))
    # Steps 1-10 in 2 processes, then 11-20 in 1; steps 1-10 in 1, then 11-20 in 2: every
    # step trained once by each world size, and a restore across world sizes both ways.
    train(name, 2, args("two_then_one", HALF), launcher)
    train(name, 1, args("two_then_one", STEPS, restore=True))
    train(name, 1, args("one_then_two", HALF))
    train(name, 2, args("one_then_two", STEPS, restore=True), launcher)

    expected = step_losses(tmp_path / "one.log")
    assert sorted(expected) == list(range(1, STEPS + 1))
    reference = load_portable(tmp_path / "one" / "model.safetensors").weights
    for tag in ("two_then_one", "one_then_two"):
        losses = step_losses(tmp_path / f"{tag}.log")
        assert sorted(losses) == sorted(expected), tag
        assert max(abs(losses[s] - expected[s]) for s in expected) < TOLERANCE, tag
        weights = load_portable(tmp_path / tag / "model.safetensors").weights
        for key, value in reference.items():
            np.testing.assert_allclose(weights[key], value, rtol=0, atol=TOLERANCE,
                                       err_msg=f"{tag}: {key}")
    # Only rank 0 logs: one header per run, with its world size.
    assert [h["world_size"] for h in headers(tmp_path / "two_then_one.log")] == [2, 1]
    assert [h["world_size"] for h in headers(tmp_path / "one_then_two.log")] == [1, 2]


def _rank(name: str, rank: int, nproc: int, port: int, args: list[str]) -> subprocess.Popen:
    entry = registry.FRAMEWORKS[name]
    env = {**entry.process_env(), **world_env(rank, nproc, port)}
    return subprocess.Popen([_python(entry), str(entry.script), "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(proc.wait(timeout=300), proc.communicate()[1]) for proc in procs]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("name", data_parallel_params())
def test_a_world_that_does_not_add_up_is_one_line_on_every_rank(name, corpus, tmp_path):
    base = [*TINY, "--text-path", str(corpus), "--max-steps", "2", "--threads", "1",
            "--checkpoint-path", str(tmp_path / "ck"), "--log-path", str(tmp_path / "x.log"),
            "--collective-timeout", "20"]
    # A batch that does not divide: refused before joining, on both ranks.
    port = free_port()
    results = _finish([_rank(name, r, 2, port, [*base, "--batch-size", "5"]) for r in range(2)])
    for code, stderr in results:
        assert code == 2 and "does not divide among 2 processes" in _one_line(stderr)
    # Ranks given different flags: both stop, each with one line.
    port = free_port()
    results = _finish([_rank(name, r, 2, port, [*base, "--learning-rate", str(0.001 * (r + 1))])
                       for r in range(2)])
    assert "different command" in _one_line(results[1][1])
    for code, stderr in results:
        assert code == 2 and _one_line(stderr)
    # A rank whose partner never comes: it gives up after --collective-timeout.
    code, stderr = _finish([_rank(name, 0, 2, free_port(), [*base, "--collective-timeout",
                                                             "3"])])[0]
    line = _one_line(stderr)
    assert code != 0 and "rank 0 of 2" in line and "did not answer" in line


def refusing_params():
    return [pytest.param(name, id=name, marks=[pytest.mark.xdist_group(name)])
            for name, entry in registry.FRAMEWORKS.items()
            if not entry.data_parallel and in_this_env(name)]


@pytest.mark.parametrize("name", refusing_params())
def test_a_framework_without_data_parallel_refuses_in_one_line(name, corpus, tmp_path):
    proc = _rank(name, 0, 2, free_port(), [*TINY, "--text-path", str(corpus),
                                           "--checkpoint-path", str(tmp_path / "ck")])
    code, stderr = _finish([proc])[0]
    assert code == 2 and "cannot train data-parallel" in _one_line(stderr)


def test_world_from_env():
    assert world_from_env({}) == World()
    torchrun = world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                               "MASTER_ADDR": "node1", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.size, torchrun.local_rank, torchrun.coordinator) == (
        3, 4, 1, "node1:1234")
    assert torchrun.rows(64) == slice(48, 64)
    jax = world_from_env({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
                          "JAX_COORDINATOR_ADDRESS": "10.0.0.1:5000"})
    assert (jax.rank, jax.size, jax.coordinator) == (1, 2, "10.0.0.1:5000")
    tf = world_from_env({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}})})
    assert (tf.rank, tf.size, tf.coordinator, tf.source) == (2, 3, "a:1", "TF_CONFIG")
    for bad, message in [({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x"}, "not in a world"),
                         ({"WORLD_SIZE": "2", "RANK": "x"}, "not an integer"),
                         ({"WORLD_SIZE": "2", "RANK": "1"}, "coordinator"),
                         ({"TF_CONFIG": "{}"}, "TF_CONFIG"),
                         ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                                                    "task": {"type": "ps", "index": 0}})},
                          "only workers")]:
        with pytest.raises(CharRnnError, match=message):
            world_from_env(bad)
    with pytest.raises(CharRnnError, match="does not divide"):
        torchrun.rows(30)


def test_launch_passes_the_first_failure_on(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text("import os, sys; sys.exit(3 if os.environ['RANK'] == '1' else 0)")
    proc = subprocess.run([sys.executable, "-m", "charrnn.common.launch", "--nproc", "2",
                           str(script)], cwd=ROOT, env=dict(os.environ), timeout=60)
    assert proc.returncode == 3
