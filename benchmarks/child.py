"""One framework of a benchmark run: train, then generate, each in a fresh child process.

A child runs under its framework's environment (common.registry), with the thread
variables set before anything is imported, in its own session so that the
terminal's Ctrl-C reaches only the runner, which then stops it. Its output goes to
files under RESULTS/runs/<framework>/<repeat>/ (train.log, train.jsonl, train.err,
generate.out, generate.err, generate_batch.out, generate_batch.err); what the
report needs from them goes into the record.

One run, in order: the float32 matmul peak (benchmarks.mfu), training, `generate`
of one stream, `generate --num-samples 64` (the batch figure), and the peak again,
so that each run's MFU is measured against the machine's speed during that run and
a change of speed in between shows. A sweep point (benchmarks.sweep) is such a run
with its own plan: its sizes, its initial weights, its directory and the
generations it measures. A run of the scaling profile trains as a data-parallel
world of W processes on this machine (`python -m charrnn.common.launch --nproc W`,
docs/SPEC.md section 11), its directory runs/<framework>/w<W>/<repeat>/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import records
from benchmarks.plan import BATCH_SAMPLES, Plan, where_of  # noqa: F401 (where_of: for tests)
from charrnn.common import cli
from charrnn.common.config import GenerateConfig
from charrnn.common.logs import read_training_log
from charrnn.common.paths import ROOT, env_python
from charrnn.common.registry import Entry
from charrnn.common.threads import thread_env

# What the report keeps of a training log's header.
HEADER_KEYS = ("versions", "device", "threads", "world_size", "python", "platform", "num_params",
               "train_batches", "val_batches", "chars_per_batch", "flops_per_char",
               "model_config", "vocab_size", "text_chars", "stall_factor")
WATCH_EVERY_S = 1.0  # how often a training child's log is looked at for new epochs


# ---------------------------------------------------------------------------------------
# Interpreters and commands
# ---------------------------------------------------------------------------------------


def skip_reason(entry: Entry) -> str | None:
    """Why `entry` cannot run on this machine (its environment is missing), or None."""
    python = entry.python()
    if not python.exists():
        return f"{records.portable(python)} does not exist (run make setup)"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util, sys; "
         f"sys.exit(importlib.util.find_spec({entry.requires!r}) is None)"],
        capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"{entry.requires} is not installed in {records.portable(python.parent.parent)}"
    return None


def train_command(entry: Entry, plan: Plan, run_dir: Path) -> list[str]:
    """The training command; a plan with a world size starts it through charrnn.common.launch,
    W = 1 too, so that every world size has the same processes around its ranks and the
    same start-up (WORLD_SIZE=1 is common.train's single-process path)."""
    s = plan.settings
    python = str(entry.python())
    launch = ([python, "-m", "charrnn.common.launch", "--nproc", str(plan.world_size)]
              if plan.world_size else [python])
    train = dataclasses.replace(
        s.train, text_path=s.text_path, init_from=str(plan.init_path),
        num_epochs=s.num_epochs, max_steps=s.max_steps, threads=s.threads,
        checkpoint_path=str(run_dir / "checkpoint"), log_path=str(run_dir / "train.log"),
        sample_length=0, random_seed=s.random_seed, device=s.device, log_every=s.log_every,
        # Only the end-of-epoch checkpoints: a periodic save would be time the table
        # does not count (the loop leaves it out) but the run still spends.
        checkpoint_minutes=0.0)
    return [*launch, str(entry.script), "train", *cli.to_argv(train)]


def generate_command(entry: Entry, plan: Plan, run_dir: Path, num_samples: int = 1) -> list[str]:
    s = plan.settings
    generate = GenerateConfig(
        checkpoint_path=str(run_dir / "checkpoint"), text_path=s.text_path, length=s.gen_length,
        random_seed=s.random_seed, threads=s.threads, device=s.device, num_samples=num_samples)
    return [str(entry.python()), str(entry.script), "generate", *cli.to_argv(generate)]


def portable_command(cmd: list[str]) -> str:
    """`cmd` as one shell line with the machine's directories left out (records.portable)."""
    return shlex.join(records.portable(word) for word in cmd)


# ---------------------------------------------------------------------------------------
# Running a child
# ---------------------------------------------------------------------------------------


@dataclass
class Finished:
    returncode: int | None  # None when killed for the timeout
    wall_s: float
    max_rss_mb: float | None  # peak resident memory (MiB), from wait4's rusage
    timed_out: bool = False


def run_child(cmd: list[str], env: dict[str, str], stdout_path: Path, stderr_path: Path,
              timeout_s: float | None, watch: Callable[[], None] | None = None) -> Finished:
    """Run `cmd` in its own session, output to files; reap it with os.wait4 for its rusage.

    Its own session keeps the terminal's Ctrl-C away from it: the runner decides, and
    stops it (and anything it started) before returning or re-raising. `watch` is
    called about every WATCH_EVERY_S while it runs (the runner's progress line).
    """
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        deadline = start + timeout_s if timeout_s else None
        timed_out = False
        watched = start
        try:
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    status, rusage = _stop(proc)
                    break
                if watch is not None and time.perf_counter() - watched > WATCH_EVERY_S:
                    watch()
                    watched = time.perf_counter()
                time.sleep(0.05)
        except BaseException:  # Ctrl-C: stop the child, then let the caller clean up
            _stop(proc)
            raise
        wall_s = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4; tell Popen so it does not wait again
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 ** 2
    return Finished(None if timed_out else code, wall_s, rusage.ru_maxrss * scale, timed_out)


def _stop(proc: subprocess.Popen, grace_s: float = 5.0):
    """SIGTERM the child's process group, SIGKILL it after `grace_s`; reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        end = time.perf_counter() + grace_s
        while time.perf_counter() < end:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return status, rusage
            time.sleep(0.05)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, rusage


def last_line(text: str) -> str:
    """The last non-empty line (the error a failed child printed last), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


# `generated N characters in T s (R chars/s; first step F s[; sampler S s])` on the stderr
# of `generate` (common.generate.run_generate); the sampler part is newer, and optional.
GENERATED_RE = re.compile(r"generated (\d+) characters in ([\d.]+) s \(([\d.]+) chars/s; "
                          r"first step ([\d.]+) s(?:; sampler ([\d.]+) s)?\)")


@dataclass(frozen=True)
class Generated:
    """The timing line of one `generate` command, as numbers."""

    chars: int  # N: run_generate counts every stream's characters (length x --num-samples)
    duration_s: float  # T: the generation loop, warm-up and loading excluded
    chars_per_s: float  # R = N / T
    first_step_s: float  # F: the first step alone (compilation included)
    sampler_s: float | None = None  # S: of T, the time spent sampling (NumPy, not the model)


def parse_generated_line(stderr: str) -> Generated | None:
    """The last timing line of `generate` in `stderr`, or None when there is none."""
    matches = GENERATED_RE.findall(stderr)
    if not matches:
        return None
    chars, duration, rate, first, sampler = matches[-1]
    return Generated(int(chars), float(duration), float(rate), float(first),
                     float(sampler) if sampler else None)


def batch_chars(chars: int, num_samples: int, length: int) -> int:
    """All streams' characters of a `generate --num-samples` line whose N is `chars`.

    run_generate counts every stream (N = length x num_samples); a line that counts
    only one (N = length) is scaled up, so the batch rate is total characters / T.
    """
    return chars * num_samples if num_samples > 1 and chars == length else chars


def measure_peak_flops(threads: int, size: int, repeats: int) -> dict:
    """benchmarks.mfu in a fresh process, its thread variables set before NumPy loads."""
    env = {**os.environ, **thread_env(threads)}
    out = subprocess.run([str(env_python("any")), "-m", "benchmarks.mfu", "--threads",
                          str(threads), "--size", str(size), "--repeats", str(repeats)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"peak_flops": None, "error": last_line(out.stderr)}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# One framework
# ---------------------------------------------------------------------------------------


def run_framework(entry: Entry, repeat: int, plan: Plan,
                  on_epochs: Callable[[list[dict]], None] | None = None) -> dict:
    """Peak, train, generate (plan.generations: one stream, then a batch), peak again; the
    record of what happened (never raises for a child's failure). `on_epochs` gets the
    epoch records so far each time training logs a new one."""
    run_dir = plan.run_dir(entry, repeat)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: logs append, so old ones must go
    run_dir.mkdir(parents=True)
    env = {**entry.process_env(), **thread_env(plan.settings.threads)}
    point = {"point": plan.point.as_dict()} if plan.point else {}
    if plan.cell:
        point["cell"] = plan.cell
    if plan.world_size:
        point["world_size"] = plan.world_size
    record = records.framework_record(
        entry.name, repeat, entry.env, entry.script, entry.python(), **point,
        started=records.now(), loadavg_start=records.loadavg())
    record["peak_before"] = _peak(plan)
    if _train(entry, plan, run_dir, env, record, on_epochs):
        for num_samples in plan.generations:  # the record names the first that fails; stop there
            if not _generate(entry, plan, run_dir, env, record, num_samples):
                break
    record["peak_after"] = _peak(plan)
    if not plan.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return records.finish(record)


def _peak(plan: Plan) -> dict:
    return measure_peak_flops(plan.settings.threads, plan.peak_size, plan.peak_repeats)


def _train(entry: Entry, plan: Plan, run_dir: Path, env: dict, record: dict,
           on_epochs: Callable[[list[dict]], None] | None) -> bool:
    """Train into `run_dir`; the losses, timings and header go into `record`. Whether it
    trained (a failure is recorded)."""
    cmd = train_command(entry, plan, run_dir)
    record["train_command"] = portable_command(cmd)
    log = run_dir / "train.jsonl"
    train = run_child(cmd, env, run_dir / "train.out", run_dir / "train.err", plan.timeout_s,
                      _epoch_watcher(log, on_epochs) if on_epochs else None)
    record["train_process"] = dataclasses.asdict(train)
    header, epochs, steps = read_training_log(log)
    record["header"] = {k: header.get(k) for k in HEADER_KEYS} if header else None
    record["epochs"], record["steps"] = epochs, steps
    if train.timed_out or train.returncode != 0 or not epochs:
        records.record_failure(record, "train", train, _last_err(run_dir / "train.err"),
                               plan.timeout_s, "no epoch record in its train.jsonl")
        return False
    return True


def _epoch_watcher(log: Path, on_epochs: Callable[[list[dict]], None]) -> Callable[[], None]:
    """A `watch` for run_child: calls on_epochs(epochs) when `log` has a new epoch record."""
    seen = {"size": -1, "epochs": 0}

    def watch() -> None:
        size = log.stat().st_size if log.exists() else -1
        if size == seen["size"]:
            return
        seen["size"] = size
        _, epochs, _ = read_training_log(log)
        if len(epochs) > seen["epochs"]:
            seen["epochs"] = len(epochs)
            on_epochs(epochs)
    return watch


def _generate(entry: Entry, plan: Plan, run_dir: Path, env: dict, record: dict,
              num_samples: int = 1) -> bool:
    """Generate from the checkpoint just trained, one stream (its timing and text go into
    record["generation"]) or a batch of `num_samples` (record["generation_batch"]: the
    timing, with every stream's characters counted). Whether it worked."""
    name = "generate" if num_samples == 1 else "generate_batch"
    cmd = generate_command(entry, plan, run_dir, num_samples)
    record[f"{name}_command"] = portable_command(cmd)
    gen = run_child(cmd, env, run_dir / f"{name}.out", run_dir / f"{name}.err", plan.timeout_s)
    record[f"{name}_process"] = dataclasses.asdict(gen)
    timing = parse_generated_line((run_dir / f"{name}.err").read_text(errors="replace"))
    if gen.timed_out or gen.returncode != 0 or timing is None:
        records.record_failure(record, "generate" if num_samples == 1 else "batch generation",
                               gen, _last_err(run_dir / f"{name}.err"), plan.timeout_s,
                               "no 'generated N characters' line on stderr")
        return False
    if num_samples == 1:
        record["generation"] = {**dataclasses.asdict(timing),
                                "text": (run_dir / "generate.out").read_text(errors="replace")}
    else:
        total = batch_chars(timing.chars, num_samples, plan.settings.gen_length)
        record["generation_batch"] = {
            **dataclasses.asdict(timing), "num_samples": num_samples, "total_chars": total,
            "total_chars_per_s": total / timing.duration_s if timing.duration_s else None}
    return True


def _last_err(path: Path) -> str:
    return last_line(path.read_text(errors="replace"))
