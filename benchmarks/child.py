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
a change of speed in between shows. A bf16 row (benchmarks.rows) trains with
`--precision bf16-mixed`, has the bf16 matmul peak measured right after the float32
one before its run and right before it after (the same minute; its MFU is against it)
and generates nothing. The inference engine's row (onnxruntime) has, in place of
training, a child that exports the initial weights to ONNX and measures its session
options (benchmarks.onnx_row prepare), then generates as the others do, with the
options it found fastest. A sweep point (benchmarks.sweep) is such a run
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

from benchmarks import onnx_row, records
from benchmarks.plan import BATCH_SAMPLES, Plan, where_of  # noqa: F401 (where_of: for tests)
from benchmarks.rows import ENGINE_MODULE, Row
from charrnn.common import cli
from charrnn.common.config import BF16_MIXED, FP32, GenerateConfig
from charrnn.common.logs import read_training_log
from charrnn.common.paths import ROOT, env_python
from charrnn.common.threads import thread_env

# What the report keeps of a training log's header.
HEADER_KEYS = ("versions", "device", "threads", "world_size", "python", "platform", "num_params",
               "train_batches", "val_batches", "chars_per_batch", "flops_per_char",
               "model_config", "vocab_size", "text_chars", "stall_factor")
WATCH_EVERY_S = 1.0  # how often a training child's log is looked at for new epochs


# ---------------------------------------------------------------------------------------
# Interpreters and commands
# ---------------------------------------------------------------------------------------


def skip_reason(entry: Row) -> str | None:
    """Why `entry` (a row, or a registry entry) cannot run on this machine (its environment
    is missing), or None."""
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


def train_command(row: Row, plan: Plan, run_dir: Path) -> list[str]:
    """The training command, in the row's precision; a plan with a world size starts it
    through charrnn.common.launch, W = 1 too, so that every world size has the same
    processes around its ranks and the same start-up (WORLD_SIZE=1 is common.train's
    single-process path)."""
    s = plan.settings
    python = str(row.python())
    launch = ([python, "-m", "charrnn.common.launch", "--nproc", str(plan.world_size)]
              if plan.world_size else [python])
    train = dataclasses.replace(
        s.train, text_path=s.text_path, init_from=str(plan.init_path),
        num_epochs=s.num_epochs, max_steps=s.max_steps, threads=s.threads,
        checkpoint_path=str(run_dir / "checkpoint"), log_path=str(run_dir / "train.log"),
        sample_length=0, random_seed=s.random_seed, device=s.device, log_every=s.log_every,
        # Only the end-of-epoch checkpoints: a periodic save would be time the table
        # does not count (the loop leaves it out) but the run still spends.
        checkpoint_minutes=0.0, precision=row.precision)
    return [*launch, str(row.script), "train", *cli.to_argv(train)]


def generate_command(row: Row, plan: Plan, run_dir: Path, num_samples: int = 1,
                     options: dict | None = None) -> list[str]:
    """`generate` of the checkpoint just trained; for the engine, of its step graph, with
    session `options` ({"intra_op_threads": 1, "optimization": "all"}; default those)."""
    s = plan.settings
    generate = GenerateConfig(
        checkpoint_path=str(run_dir / "checkpoint"), text_path=s.text_path, length=s.gen_length,
        random_seed=s.random_seed, threads=s.threads, device=s.device, num_samples=num_samples)
    if not row.engine:
        return [str(row.python()), str(row.script), "generate", *cli.to_argv(generate)]
    options = options or {"intra_op_threads": 1, "optimization": "all"}
    generate = dataclasses.replace(generate, checkpoint_path=str(run_dir / onnx_row.STEP_GRAPH))
    return [str(row.python()), "-m", ENGINE_MODULE, "generate", "--intra-op-threads",
            str(options["intra_op_threads"]), "--optimization", options["optimization"],
            *cli.to_argv(generate)]


def prepare_command(row: Row, plan: Plan, run_dir: Path) -> list[str]:
    """The engine's export of the initial weights and measurement of its session options
    (benchmarks.onnx_row prepare), for the generations the plan measures."""
    s = plan.settings
    return [str(row.python()), "-m", ENGINE_MODULE, "prepare", "--init-from",
            str(plan.init_path), "--out", str(run_dir), "--threads", str(s.threads),
            "--num-samples", ",".join(map(str, row.generations(plan.generations))),
            "--length", str(s.gen_length), "--text-path", s.text_path,
            "--random-seed", str(s.random_seed)]


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


def measure_peak_flops(threads: int, size: int, repeats: int, dtype: str = "fp32") -> dict:
    """benchmarks.mfu in a fresh process, its thread variables set before NumPy (or, for
    the bf16 peak, PyTorch: the modern environment's) loads."""
    env = {**os.environ, **thread_env(threads)}
    python = env_python("any" if dtype == "fp32" else "modern")
    out = subprocess.run([str(python), "-m", "benchmarks.mfu", "--threads",
                          str(threads), "--size", str(size), "--repeats", str(repeats),
                          "--dtype", dtype],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"peak_flops": None, "error": last_line(out.stderr)}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# One framework
# ---------------------------------------------------------------------------------------


def run_framework(row: Row, repeat: int, plan: Plan,
                  on_epochs: Callable[[list[dict]], None] | None = None) -> dict:
    """Peak, train (the engine: prepare), generate (the row's of plan.generations: one
    stream, then a batch), peak again; the record of what happened (never raises for a
    child's failure). `on_epochs` gets the epoch records so far each time training logs a
    new one."""
    run_dir = plan.run_dir(row, repeat)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: logs append, so old ones must go
    run_dir.mkdir(parents=True)
    env = {**row.process_env(), **thread_env(plan.settings.threads)}
    point = {"point": plan.point.as_dict()} if plan.point else {}
    if plan.cell:
        point["cell"] = plan.cell
    if plan.world_size:
        point["world_size"] = plan.world_size
    if row.precision != FP32:
        point["precision"] = row.precision
    if row.engine:
        point["engine"] = True
    record = records.framework_record(
        row.name, repeat, row.env, row.script, row.python(), **point,
        started=records.now(), loadavg_start=records.loadavg())
    bf16 = row.precision == BF16_MIXED
    record["peak_before"] = _peak(plan)
    if bf16:  # the same minute as the float32 peak, on either side of the run
        record["peak_bf16_before"] = _peak(plan, "bf16")
    options = {}
    if _prepare(row, plan, run_dir, env, record) if row.engine else _train(
            row, plan, run_dir, env, record, on_epochs):
        options = (record.get("session") or {}).get("chosen") or {}
        for num_samples in row.generations(plan.generations):  # the first that fails: stop
            if not _generate(row, plan, run_dir, env, record, num_samples,
                             options.get(str(num_samples))):
                break
    if bf16:
        record["peak_bf16_after"] = _peak(plan, "bf16")
    record["peak_after"] = _peak(plan)
    if not plan.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return records.finish(record)


def _peak(plan: Plan, dtype: str = "fp32") -> dict:
    return measure_peak_flops(plan.settings.threads, plan.peak_size, plan.peak_repeats, dtype)


def _train(row: Row, plan: Plan, run_dir: Path, env: dict, record: dict,
           on_epochs: Callable[[list[dict]], None] | None) -> bool:
    """Train into `run_dir`; the losses, timings and header go into `record`. Whether it
    trained (a failure is recorded)."""
    cmd = train_command(row, plan, run_dir)
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


def _prepare(row: Row, plan: Plan, run_dir: Path, env: dict, record: dict) -> bool:
    """The engine's stand-in for training: export the initial weights and measure the
    session options (benchmarks.onnx_row prepare); what it measured and chose goes into
    record["session"], its versions into record["header"]. Whether it worked."""
    cmd = prepare_command(row, plan, run_dir)
    record["prepare_command"] = portable_command(cmd)
    proc = run_child(cmd, env, run_dir / "prepare.out", run_dir / "prepare.err",
                     plan.timeout_s)
    record["prepare_process"] = dataclasses.asdict(proc)
    path = run_dir / onnx_row.SESSION_NAME
    session = json.loads(path.read_text()) if path.exists() else None
    if proc.timed_out or proc.returncode != 0 or session is None:
        records.record_failure(record, "prepare", proc, _last_err(run_dir / "prepare.err"),
                               plan.timeout_s, f"no {onnx_row.SESSION_NAME} written")
        return False
    record["header"] = {k: session.get(k) for k in HEADER_KEYS if k in session}
    record["session"] = {k: session[k] for k in ("step_graph", "tune_rounds", "measured",
                                                 "chosen")}
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


def _generate(row: Row, plan: Plan, run_dir: Path, env: dict, record: dict,
              num_samples: int = 1, options: dict | None = None) -> bool:
    """Generate from the checkpoint just trained (the engine: its step graph, with session
    `options`), one stream (its timing and text go into record["generation"]) or a batch
    of `num_samples` (record["generation_batch"]: the timing, with every stream's
    characters counted). Whether it worked."""
    name = "generate" if num_samples == 1 else "generate_batch"
    cmd = generate_command(row, plan, run_dir, num_samples, options)
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
