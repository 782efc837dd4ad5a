"""Data-parallel training: the world a launcher started, and what the loop agrees on
across it (docs/SPEC.md section 11).

    torchrun --nproc-per-node 2 pytorch_model.py train --batch-size 64

Every process runs the same script and flags. `world_from_env` reads which rank it is
from the launcher's variables; the framework joins its own process group
(`CharRNN.init_world`) and averages gradients with its own engine; this module only
says which rows of a batch a rank trains, and sums small host arrays across ranks
through the framework (`CharRNN.all_sum`), so that every rank takes the same
decisions: the loss it logs, when to save, when to stop. Standard library and NumPy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from charrnn.common.errors import CharRnnError

DEFAULT_PORT = 29500  # torchrun's, when only an address is given
JOINED = False  # whether this process has started joining a world (`common.cli.exit_process`)


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among `size` data-parallel processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank among this machine's processes (which GPU)
    coordinator: str | None = None  # "host:port" of rank 0's rendezvous, when size > 1
    source: str = "single process"  # which launcher variables said so, for errors and logs

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, samples and writes checkpoints."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """Rank r of W trains rows [r B/W, (r+1) B/W) of every batch (and of the state)."""
        if batch_size % self.size:
            raise CharRnnError(f"--batch-size {batch_size} does not divide among {self.size} "
                               f"processes ({self.source}): use a multiple of {self.size}")
        per_rank = batch_size // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


SINGLE = World()


def _int(env: Mapping[str, str], name: str, source: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise CharRnnError(f"{source}: {name} is not set") from None
    except ValueError:
        raise CharRnnError(f"{source}: {name}={env[name]!r} is not an integer") from None


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The world as the launcher describes it, or SINGLE when none started this process.

    Read, first found wins:
    - TF_CONFIG (TensorFlow's): {"cluster": {"worker": [host:port, ...]},
      "task": {"type": "worker", "index": i}}; rank i of len(workers), coordinator the
      first worker.
    - JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (jax.distributed's
      arguments, as variables).
    - WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: torchrun's, also set by
      hand or by a Slurm script for any framework.
    A world that does not add up (rank out of range, a missing variable) is a
    CharRnnError naming the variable."""
    env = os.environ if env is None else env
    if env.get("TF_CONFIG"):
        world = _tf_config(env["TF_CONFIG"])
    elif env.get("JAX_NUM_PROCESSES"):
        source = "JAX_NUM_PROCESSES"
        world = World(_int(env, "JAX_PROCESS_ID", source), _int(env, "JAX_NUM_PROCESSES", source),
                      int(env.get("LOCAL_RANK", 0)), env.get("JAX_COORDINATOR_ADDRESS"), source)
    elif env.get("WORLD_SIZE"):
        source = "WORLD_SIZE"
        address = env.get("MASTER_ADDR")
        coordinator = f"{address}:{env.get('MASTER_PORT', DEFAULT_PORT)}" if address else None
        rank = _int(env, "RANK", source)
        world = World(rank, _int(env, "WORLD_SIZE", source),
                      int(env.get("LOCAL_RANK", rank)), coordinator, source)
    else:
        return SINGLE
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise CharRnnError(f"{world.source}: rank {world.rank} is not in a world of "
                           f"{world.size} processes")
    if world.size > 1 and not world.coordinator:
        raise CharRnnError(f"{world.source}: a world of {world.size} processes needs the "
                           "coordinator's address (MASTER_ADDR, JAX_COORDINATOR_ADDRESS or "
                           "TF_CONFIG's first worker)")
    return world


def _tf_config(text: str) -> World:
    source = "TF_CONFIG"
    try:
        config = json.loads(text)
        workers = list(config["cluster"]["worker"])
        task = config["task"]
        rank = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CharRnnError(f"TF_CONFIG is not a worker cluster with a task index ({exc})") \
            from None
    if task.get("type", "worker") != "worker":
        raise CharRnnError(f"TF_CONFIG: task type {task.get('type')!r}: only workers train "
                           "(no chief, parameter server or evaluator)")
    return World(rank, len(workers), rank, workers[0] if workers else None, source)


def join_jax(jax, world: World, device: str, timeout_s: float) -> None:
    """`jax.distributed.initialize` at the world's coordinator (rank 0 serves it), with
    JAX's cross-process collectives over gloo on the CPU, failing after `timeout_s`;
    before the backend starts. For the JAX-based files (jax, keras[jax]), which pass
    the `jax` module: common/ does not import JAX itself."""
    if device != "gpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(world.coordinator, world.size, world.rank,
                               initialization_timeout=max(1, round(timeout_s)))


def sum_by_allgather(allgather: Callable[[np.ndarray], np.ndarray],
                     values: np.ndarray) -> np.ndarray:
    """`CharRNN.all_sum` through an all-gather ((n,) uint32 of each rank -> (W, n)):
    float64 crosses as pairs of uint32, for an engine that keeps 64-bit floats off
    (JAX does by default), and the ranks' values are summed here."""
    values = np.asarray(values, np.float64)
    raw = np.asarray(allgather(np.ascontiguousarray(values).reshape(-1).view(np.uint32)))
    return raw.view(np.float64).sum(axis=0).reshape(values.shape)


def config_digest(values: object) -> float:
    """A number that two ranks share only when they were given the same config: the
    first 48 bits of a SHA-256 of its JSON, exact in a float64."""
    text = json.dumps(values, sort_keys=True, default=str)
    return float(int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big"))


# The watchdog's own process: it reads "what" (arm) and "-" (disarm) lines from its stdin,
# and when an armed deadline passes it prints the rank's line and kills the rank. A
# separate process because a framework blocked in C++ can hold the GIL (TensorFlow's
# MultiWorkerMirroredStrategy waiting for a missing worker does), so no Python thread
# of the rank could run. It ignores the terminal's signals and ends with its stdin.
_WATCHDOG = r"""
import os, select, signal, sys, time
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
rank_pid, timeout_s, prefix = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline, what, pending = None, "", b""
while True:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if select.select([0], [], [], wait)[0]:
        chunk = os.read(0, 4096)
        if not chunk:
            sys.exit(0)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            deadline, what = ((None, "") if line == b"-" else
                              (time.monotonic() + timeout_s, line.decode()))
    elif deadline is not None:
        sys.stderr.write(f"{prefix} ({what}); stopping\n")
        sys.stderr.flush()
        os.kill(rank_pid, signal.SIGKILL)
        sys.exit(0)
"""


class Watchdog:
    """Ends this rank with one line when the other ranks stop answering: armed while it
    waits on them (joining, a training step with its collectives, a save), it kills the
    rank `timeout_s` after it was armed (exit status 137, as SIGKILL).

    The frameworks' own collective timeouts do not cover everything (TensorFlow waits
    for a missing worker for ever, holding the GIL), so this clock, in a small process
    of its own, is the last word; what a framework raises earlier is reported as it is.
    A checkpoint is written atomically and the checkpoint lock is the kernel's, so
    nothing is left half-done."""

    def __init__(self, world: World, timeout_s: float):
        self.world, self.timeout_s = world, timeout_s
        self._stdin: int | None = None

    @contextlib.contextmanager
    def armed(self, what: str) -> Iterator[None]:
        if self.world.size == 1:
            yield
            return
        if self._stdin is None:
            prefix = (f"error: rank {self.world.rank} of {self.world.size}: the other ranks "
                      f"did not answer within --collective-timeout {self.timeout_s:g} s")
            proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                     str(self.timeout_s), prefix], stdin=subprocess.PIPE)
            self._stdin = proc.stdin.fileno()
            self._proc = proc  # kept: its stdin closes when this process ends
        os.write(self._stdin, what.replace("\n", " ").encode() + b"\n")
        try:
            yield
        finally:
            os.write(self._stdin, b"-\n")


class Agreement:
    """What every rank decides together, through `all_sum` (a sum over ranks of a small
    float64 array), and the watchdog over waiting on the others. With one process
    nothing is sent and nothing watched."""

    def __init__(self, world: World, all_sum: Callable[[np.ndarray], np.ndarray],
                 timeout_s: float = 600.0):
        self.world, self._all_sum = world, all_sum
        self.watchdog = Watchdog(world, timeout_s)

    def check_same(self, digest: float, what: str) -> None:
        """Refuse on every rank when the ranks' digests differ (different flags or data)."""
        if self.world.size == 1:
            return
        digests = np.zeros(self.world.size)
        digests[self.world.rank] = digest
        digests = self._all_sum(digests)
        if not np.all(digests == digests[0]):
            differ = [r for r in range(self.world.size) if digests[r] != digests[0]]
            raise CharRnnError(f"rank {self.world.rank}: ranks {', '.join(map(str, differ))} "
                               f"were given a different {what} than rank 0 (every rank must "
                               "run the same command)")

    def check_all(self, ok: bool, message: str) -> None:
        """Raise `message` on every rank when any rank says not `ok`: a rank that fails
        alone would leave the others waiting in a collective."""
        if self.world.size == 1:
            if not ok:
                raise CharRnnError(message)
            return
        failed = self._all_sum(np.array([0.0 if ok else 1.0]))[0]
        if failed:
            raise CharRnnError(message if not ok else
                               f"rank {self.world.rank}: stopping, as {int(failed)} other "
                               "rank(s) failed (their error says why)")

    def step(self, loss: float, stop: bool, save: bool) -> tuple[float, bool, bool]:
        """The global batch's mean loss (ranks train equal rows), and whether any rank
        was signalled to stop or is due to save."""
        if self.world.size == 1:
            return loss, stop, save
        total = self._all_sum(np.array([loss, float(stop), float(save)]))
        return float(total[0] / self.world.size), bool(total[1]), bool(total[2])

    def farewell(self) -> None:
        """One last collective before a rank exits, whose failure is ignored. A rank that
        finished the run's last collective may still owe the others its part of it
        (TensorFlow's ring pulls each part from its owner's server); a rank that left at
        once closed that server under them ("Socket closed"). Once this one completes on
        a rank, every rank has finished all the run's real collectives."""
        if self.world.size == 1:
            return
        try:
            self._all_sum(np.zeros(1))
        except Exception:  # a peer that left first: the run itself is complete and saved
            pass

    def gather_rows(self, local: np.ndarray, batch_size: int) -> np.ndarray:
        """(L, B/W, H) of each rank -> the whole (L, B, H), on every rank: each rank's
        rows in place, zeros elsewhere, summed."""
        if self.world.size == 1:
            return local
        whole = np.zeros((local.shape[0], batch_size, *local.shape[2:]), np.float64)
        whole[:, self.world.rows(batch_size)] = local
        return self._all_sum(whole).astype(local.dtype)
