"""Run every framework the same way, one fresh process each, and record what happened.

    python benchmarks/run_all.py                                  # quick profile, all frameworks
    python benchmarks/run_all.py --profile full                   # the original table: 32 epochs
    python benchmarks/run_all.py --frameworks numpy,pytorch --max-steps 20
    python benchmarks/run_all.py --resume                         # go on after Ctrl-C or a crash

Every framework gets the same corpus, the same portable initial weights (written
once per run from --random-seed), the same flags and the same thread count, and
trains in a fresh process under its own environment's interpreter, with the
thread variables set before anything is imported. Then its `generate` command
produces --gen-length characters from the checkpoint it just trained.

What a run leaves in --out (default benchmarks/results/<profile>):

    records.jsonl          a "run" record (machine, settings, measured matmul peak), then
                           one record per framework and repeat, appended as each finishes
    init.safetensors       the shared initial weights
    runs/<framework>/<k>/  train.log, train.jsonl, train.err, generate.out, generate.err

and then the report of `benchmarks/report.py` (report.md, results.csv, plots), which
reads only records.jsonl. A framework that fails or passes --timeout is recorded as
failed with its last stderr line, and the run goes on; one whose script does not
exist yet is recorded as skipped. Ctrl-C stops the current child and keeps what is
done; --resume skips every framework and repeat already recorded (ok or failed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `common` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from common import registry  # noqa: E402
from common.bootstrap import VENVS, thread_env  # noqa: E402
from common.logs import read_training_log  # noqa: E402
from common.logs import read_jsonl  # noqa: E402

RECORDS_NAME = "records.jsonl"
RESULTS_ROOT = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------
# Profiles: what a run trains. Explicit --num-epochs / --max-steps override them.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    num_epochs: int
    max_steps: int | None  # None: whole epochs
    timeout_s: float  # per framework, training and generation each
    description: str


# The quick profile must finish in under 15 minutes for all ten frameworks together on
# this 2-core CPU. Measured on a quiet machine (benchmarks/results/ of a 40-step run, 2
# threads, default spec): a step takes 25 ms (pytorch) to about 210 ms (pytensor,
# chainer), so one whole epoch of 245 steps is 7 s to 70 s per framework and about 270 s
# for the ten; start-up, compilation, validation and `generate --length 1024` add about
# 80 s. One full epoch therefore takes about 6 minutes in all, and seconds per epoch and
# the epoch-1 losses are measured, not extrapolated.
QUICK_STEPS = None

PROFILES = {
    "quick": Profile(1, QUICK_STEPS, 900,
                     "one epoch (245 steps of 64 x 64 characters) on tinyshakespeare with "
                     "the default model spec from the same initial weights, then one pass "
                     "over the validation text and 1,024 generated characters"),
    "full": Profile(32, None, 24 * 3600,
                    "32 epochs of the default model spec on tinyshakespeare, the original "
                    "suite's table"),
}


# ---------------------------------------------------------------------------------------
# Targets: a framework name, the script it runs and the interpreter that runs it.
# ---------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    script: Path
    python: Path
    env_vars: dict[str, str] = field(default_factory=dict)
    env: str = "modern"
    requires: str | None = None  # the module that tells whether its interpreter can run it

    @property
    def slug(self) -> str:
        """A directory name: "keras[jax]" -> "keras-jax"."""
        return re.sub(r"[^\w.-]+", "-", self.name).strip("-")

    def skip_reason(self) -> str | None:
        """Why this target cannot run here (not written yet, environment missing), or None."""
        if not self.script.exists():
            return f"{self.script.name} is not written yet"
        if not self.python.exists():
            return f"{_rel(self.python)} does not exist (run make setup)"
        if self.requires:
            probe = subprocess.run(
                [str(self.python), "-c", "import importlib.util, sys; "
                 f"sys.exit(importlib.util.find_spec({self.requires!r}) is None)"],
                capture_output=True, timeout=60)
            if probe.returncode != 0:
                return f"{self.requires} is not installed in {self.python.parent.parent.name}"
        return None


def registry_target(name: str) -> Target:
    entry = registry.FRAMEWORKS[name]
    python = entry.python()
    if entry.env == "any":  # numpy runs anywhere; the benchmark runs it in the modern venv
        modern = VENVS["modern"] / "bin" / "python"
        python = modern if modern.exists() else Path(sys.executable)
    return Target(name, entry.script, python, dict(entry.env_vars), entry.env, entry.requires)


def script_target(spec: str) -> Target:
    """--add-script NAME=PATH: a script outside the registry, run by this interpreter."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"error: --add-script {spec!r}: expected NAME=PATH")
    return Target(name, Path(path).resolve(), Path(sys.executable), env="current")


def select_targets(frameworks: str | None, add_scripts: list[str]) -> list[Target]:
    names = [n.strip() for n in frameworks.split(",") if n.strip()] if frameworks else list(
        registry.FRAMEWORKS)
    unknown = [n for n in names if n not in registry.FRAMEWORKS]
    if unknown:
        raise SystemExit(f"error: --frameworks: unknown {', '.join(unknown)}; "
                         f"known: {', '.join(registry.FRAMEWORKS)}")
    targets = [registry_target(n) for n in names] + [script_target(s) for s in add_scripts]
    seen = set()
    for t in targets:
        if t.name in seen:
            raise SystemExit(f"error: framework {t.name!r} given twice")
        seen.add(t.name)
    return targets


# ---------------------------------------------------------------------------------------
# Settings: everything that decides what is trained, fixed for a run and checked on --resume.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    profile: str  # "quick", "full", or "custom" when flags override the profile
    description: str
    num_epochs: int
    max_steps: int | None
    threads: int
    random_seed: int
    text_path: str
    text_sha256: str
    extra_train_args: tuple[str, ...]
    device: str
    gen_length: int
    log_every: int
    train_batches: int  # per epoch, as common.batching cuts the text
    chars_per_batch: int

    def identity(self) -> dict:
        """The fields two runs must share for --resume to combine their records."""
        d = dataclasses.asdict(self)
        d.pop("description")
        d["extra_train_args"] = list(d["extra_train_args"])
        return d


def train_config_from_args(extra: list[str]):
    """The TrainConfig that `train` will see for these extra flags (the one parser, common.cli)."""
    from common.cli import parse_args
    return parse_args(["train", *extra], "run_all")[1]


def steps_per_epoch_and_vocab(text_path: Path, cfg):
    """(train batches per epoch, vocabulary) exactly as common.train cuts this text."""
    from common.batching import make_streams
    from common.text import Vocab, read_text
    text = read_text(text_path)
    vocab = Vocab.choose(text, cfg.vocab)
    train, _ = make_streams(vocab.encode(text), cfg.batch_size, cfg.seq_len, cfg.val_fraction,
                            str(text_path))
    return len(train), train.chars_per_batch, vocab


def choose_log_every(train_batches: int, total_steps: int, points: int = 100) -> int:
    """Log a step loss every N steps, ~`points` in all, N dividing the epoch (and max_steps)
    so that the last logged step of every epoch is its last step (exact loss-vs-time)."""
    target = max(1, total_steps // points)
    g = math.gcd(train_batches, total_steps) if total_steps % train_batches else train_batches
    return max(d for d in range(1, min(target, g) + 1) if g % d == 0)


def write_init_weights(path: Path, cfg, vocab, seed: int) -> None:
    from common.weights import init_weights, save_portable
    config = cfg.model_config(vocab.size)
    save_portable(path, init_weights(config, seed), config, vocab, framework="init",
                  random_seed=seed)


# ---------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gb": mem_gb, "os": platform.platform(), "machine": platform.machine(),
            "runner_python": platform.python_version(), "hostname": platform.node()}


def git_info() -> dict:
    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                 timeout=30)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None
            else None}


def measure_peak_flops(threads: int, size: int) -> dict:
    """benchmarks.mfu in a fresh process, its thread variables set before NumPy loads."""
    python = VENVS["modern"] / "bin" / "python"
    python = python if python.exists() else Path(sys.executable)
    env = {**os.environ, **thread_env(threads)}
    out = subprocess.run([str(python), "-m", "benchmarks.mfu", "--threads", str(threads),
                          "--size", str(size)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        return {"peak_flops": None, "error": last_line(out.stderr)}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------


@dataclass
class Finished:
    returncode: int | None  # None when killed for the timeout
    wall_s: float
    max_rss_mb: float | None  # peak resident memory (MiB), from wait4's rusage
    timed_out: bool = False


def run_child(cmd: list[str], env: dict[str, str], stdout_path: Path, stderr_path: Path,
              timeout_s: float | None) -> Finished:
    """Run `cmd` in its own session, output to files; reap it with os.wait4 for its rusage.

    Its own session keeps the terminal's Ctrl-C away from it: the runner decides, and
    stops it (and anything it started) before returning or re-raising.
    """
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        deadline = start + timeout_s if timeout_s else None
        timed_out = False
        try:
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    status, rusage = _stop(proc)
                    break
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


GENERATED_RE = re.compile(r"generated (\d+) characters in ([\d.]+) s \(([\d.]+) chars/s; "
                          r"first step ([\d.]+) s\)")


def parse_generated_line(stderr: str) -> dict | None:
    """The timing line of `generate` (common.generate.run_generate), as numbers."""
    matches = GENERATED_RE.findall(stderr)
    if not matches:
        return None
    chars, duration, rate, first = matches[-1]
    return {"chars": int(chars), "duration_s": float(duration), "chars_per_s": float(rate),
            "first_step_s": float(first)}


# ---------------------------------------------------------------------------------------
# One framework
# ---------------------------------------------------------------------------------------


HEADER_KEYS = ("versions", "device", "threads", "python", "platform", "num_params",
               "train_batches", "val_batches", "chars_per_batch", "flops_per_char",
               "model_config", "vocab_size", "text_chars")


def train_command(t: Target, s: Settings, init_path: Path, run_dir: Path) -> list[str]:
    cmd = [str(t.python), str(t.script), "train", "--text-path", s.text_path,
           "--init-from", str(init_path), "--num-epochs", str(s.num_epochs),
           "--threads", str(s.threads), "--checkpoint-path", str(run_dir / "checkpoint"),
           "--log-path", str(run_dir / "train.log"), "--sample-length", "0",
           "--random-seed", str(s.random_seed), "--device", s.device,
           "--log-every", str(s.log_every)]
    if s.max_steps is not None:
        cmd += ["--max-steps", str(s.max_steps)]
    return cmd + list(s.extra_train_args)


def generate_command(t: Target, s: Settings, run_dir: Path) -> list[str]:
    return [str(t.python), str(t.script), "generate", "--checkpoint-path",
            str(run_dir / "checkpoint"), "--text-path", s.text_path, "--length",
            str(s.gen_length), "--random-seed", str(s.random_seed), "--threads", str(s.threads),
            "--device", s.device]


def run_framework(t: Target, repeat: int, s: Settings, init_path: Path, out: Path,
                  timeout_s: float | None, peak: dict, keep_checkpoints: bool) -> dict:
    """Train, then generate; the record of what happened (never raises for a child's failure)."""
    run_dir = out / "runs" / t.slug / str(repeat)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: logs append, so old ones must go
    run_dir.mkdir(parents=True)
    env = {**os.environ, **t.env_vars, **thread_env(s.threads)}
    record = {"kind": "framework", "framework": t.name, "repeat": repeat, "status": "ok",
              "stage": None, "error": None, "env": t.env,
              "script": _rel(t.script), "python": _rel(t.python),
              "run_dir": _rel(run_dir), "peak_flops": peak.get("peak_flops"),
              "started": _now(), "loadavg_start": _loadavg()}

    cmd = train_command(t, s, init_path, run_dir)
    record["train_command"] = shlex.join(_rel(c) for c in cmd)
    train = run_child(cmd, env, run_dir / "train.out", run_dir / "train.err", timeout_s)
    record["train_process"] = dataclasses.asdict(train)
    header, epochs, steps = read_training_log(run_dir / "train.jsonl")
    record["header"] = {k: header.get(k) for k in HEADER_KEYS} if header else None
    record["epochs"], record["steps"] = epochs, steps
    train_err = (run_dir / "train.err").read_text(errors="replace")
    if train.timed_out or train.returncode != 0 or not epochs:
        _record_failure(record, "train", train, train_err, timeout_s,
                        f"no epoch record in {_rel(run_dir / 'train.jsonl')}")
        return _finish(record)

    cmd = generate_command(t, s, run_dir)
    record["generate_command"] = shlex.join(_rel(c) for c in cmd)
    gen = run_child(cmd, env, run_dir / "generate.out", run_dir / "generate.err", timeout_s)
    record["generate_process"] = dataclasses.asdict(gen)
    gen_err = (run_dir / "generate.err").read_text(errors="replace")
    timing = parse_generated_line(gen_err)
    if gen.timed_out or gen.returncode != 0 or timing is None:
        _record_failure(record, "generate", gen, gen_err, timeout_s,
                        "no 'generated N characters' line on stderr")
    else:
        timing["text"] = (run_dir / "generate.out").read_text(errors="replace")
        record["generation"] = timing
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return _finish(record)


def _record_failure(record: dict, stage: str, proc, stderr: str, timeout_s: float,
                    why_if_exit_0: str) -> None:
    """Mark `record` failed (or timed out) at `stage`, with the reason a user can act on."""
    record["status"] = "timeout" if proc.timed_out else "failed"
    record["stage"] = stage
    why = last_line(stderr) or f"exit status {proc.returncode}"
    if proc.timed_out:
        why = f"timed out after {timeout_s:.0f} s (last stderr line: {why})"
    elif proc.returncode == 0:
        why = why_if_exit_0
    record["error"] = why


def _finish(record: dict) -> dict:
    record["finished"] = _now()
    record["loadavg_end"] = _loadavg()
    return record


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _rel(path) -> str:
    """A path relative to the project root when it is inside it (records stay portable)."""
    p = Path(path)
    try:
        return str(p.relative_to(ROOT)) if p.is_absolute() else str(path)
    except ValueError:
        return str(path)


def skipped_record(t: Target, reason: str) -> dict:
    return {"kind": "framework", "framework": t.name, "repeat": 0, "status": "skipped",
            "stage": None, "error": reason, "env": t.env, "script": _rel(t.script),
            "python": _rel(t.python), "finished": _now()}


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


def append_record(path: Path, record: dict) -> None:
    """One JSON line, flushed to disk before the next framework starts."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def done_runs(records: list[dict]) -> set[tuple[str, int]]:
    """(framework, repeat) pairs already finished: ok, failed or timed out (not skipped)."""
    return {(r["framework"], r.get("repeat", 0)) for r in records
            if r.get("kind") == "framework" and r.get("status") in ("ok", "failed", "timeout")}


def previous_settings(records: list[dict]) -> dict | None:
    runs = [r for r in records if r.get("kind") == "run"]
    return runs[0].get("settings") if runs else None


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_all.py", description="Benchmark every framework the same way; "
        "results appended to RESULTS/records.jsonl, then the report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="; ".join(f"{k}: {v.description}" for k, v in PROFILES.items()))
    p.add_argument("--frameworks", help="comma-separated names (default: all registered: "
                   + ", ".join(registry.FRAMEWORKS) + ")")
    p.add_argument("--add-script", action="append", default=[], metavar="NAME=PATH",
                   help="also benchmark a script outside the registry, run by this interpreter")
    p.add_argument("--num-epochs", type=int, help="override the profile's epochs")
    p.add_argument("--max-steps", type=int, help="override the profile's step cap "
                   "(0: none, whole epochs)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for every framework (--threads and the OMP/MKL/BLAS variables)")
    p.add_argument("--repeats", type=int, default=1, help="runs per framework; "
                   "the report takes medians")
    p.add_argument("--text-path", help="training text (default: tinyshakespeare)")
    p.add_argument("--random-seed", type=int, default=42,
                   help="seed of the shared initial weights and of generation")
    p.add_argument("--extra-train-args", default="", metavar="'FLAGS'",
                   help="more train flags for every framework, e.g. '--seq-len 16 --batch-size 4 "
                   "--rnn-size 16 --embedding-size 8' (the model sizes shape the initial weights)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "gpu"),
                   help="--device of every framework")
    p.add_argument("--gen-length", type=int, default=1024, help="characters to generate")
    p.add_argument("--timeout", type=float, help="seconds per framework for training, and "
                   "again for generation (default: the profile's)")
    p.add_argument("--out", type=Path, help="results directory (default: "
                   "benchmarks/results/<profile>, or .../custom when flags override the profile)")
    p.add_argument("--resume", action="store_true", help="keep the records in --out and run only "
                   "the frameworks and repeats not finished yet")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="square matrix size of the float32 peak measurement")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each framework's trained checkpoint under runs/")
    p.add_argument("--no-report", action="store_true", help="only record; no report at the end")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def resolve_settings(args) -> Settings:
    from common.text import default_corpus_path
    profile = PROFILES[args.profile]
    num_epochs = args.num_epochs if args.num_epochs is not None else profile.num_epochs
    max_steps = profile.max_steps if args.max_steps is None else (args.max_steps or None)
    extra = tuple(shlex.split(args.extra_train_args))
    text_path = Path(args.text_path).resolve() if args.text_path else default_corpus_path()
    custom = ((num_epochs, max_steps) != (profile.num_epochs, profile.max_steps) or extra
              or args.text_path is not None)
    name = "custom" if custom else args.profile
    cfg = train_config_from_args(list(extra))
    train_batches, chars_per_batch, _ = steps_per_epoch_and_vocab(text_path, cfg)
    total = num_epochs * train_batches if max_steps is None else min(
        max_steps, num_epochs * train_batches)
    if custom:
        what = (f"{'up to ' if max_steps else ''}{total} training steps "
                f"({total / train_batches:.3g} epochs of {train_batches} batches) on "
                f"{text_path.name}" + (f" with {' '.join(extra)}" if extra else
                                       " with the default model spec"))
    else:
        what = profile.description
    return Settings(
        profile=name, description=what, num_epochs=num_epochs, max_steps=max_steps,
        threads=args.threads, random_seed=args.random_seed, text_path=str(text_path),
        text_sha256=hashlib.sha256(text_path.read_bytes()).hexdigest(),
        extra_train_args=extra, device=args.device, gen_length=args.gen_length,
        log_every=choose_log_every(train_batches, total), train_batches=train_batches,
        chars_per_batch=chars_per_batch)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit("error: --threads and --repeats must be >= 1")
    targets = select_targets(args.frameworks, args.add_script)
    try:
        settings = resolve_settings(args)
    except Exception as exc:  # CharRnnError and argparse exits give one line already
        if isinstance(exc, SystemExit):
            raise
        raise SystemExit(f"error: {exc}") from None
    out = (args.out or RESULTS_ROOT / settings.profile).resolve()
    timeout_s = args.timeout if args.timeout is not None else PROFILES[args.profile].timeout_s
    records_path = out / RECORDS_NAME
    init_path = out / "init.safetensors"

    if args.dry_run:
        for t in targets:
            run_dir = out / "runs" / t.slug / "0"
            print(f"# {t.name}\n{shlex.join(train_command(t, settings, init_path, run_dir))}\n"
                  f"{shlex.join(generate_command(t, settings, run_dir))}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    previous = read_jsonl(records_path) if records_path.exists() else []
    if args.resume and previous:
        before = previous_settings(previous)
        if before is not None and before != settings.identity():
            now = settings.identity()
            changed = sorted(k for k in now if before.get(k) != now[k])
            raise SystemExit(f"error: {records_path}: recorded with different settings "
                             f"({', '.join(changed)}); resume with the same flags or use "
                             "another --out")
    elif previous:
        backup = records_path.with_suffix(".jsonl.prev")
        records_path.replace(backup)
        print(f"starting a new run; the previous records are in {_rel(backup)}", file=sys.stderr)
        previous = []
    done = done_runs(previous)
    todo = [(t, k) for k in range(args.repeats) for t in targets]
    for t, k in todo:
        if (t.name, k) in done:
            print(f"{t.name}" + (f" (repeat {k + 1})" if args.repeats > 1 else "")
                  + ": already recorded, skipped (--resume)", file=sys.stderr)
    todo = [(t, k) for t, k in todo if (t.name, k) not in done]

    peak = {}
    if todo:
        cfg = train_config_from_args(list(settings.extra_train_args))
        _, _, vocab = steps_per_epoch_and_vocab(Path(settings.text_path), cfg)
        write_init_weights(init_path, cfg, vocab, settings.random_seed)
        print(f"measuring the float32 matmul peak ({settings.threads} threads)...",
              file=sys.stderr)
        peak = measure_peak_flops(settings.threads, args.matmul_size)
        if peak.get("peak_flops"):
            print(f"peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s", file=sys.stderr)
        append_record(records_path, {
            "kind": "run", "started": _now(), "resumed": bool(args.resume and previous),
            "settings": settings.identity(), "description": settings.description,
            "machine": machine_info(), "git": git_info(), "peak": peak, "timeout_s": timeout_s,
            "frameworks": [t.name for t in targets], "repeats": args.repeats,
            "loadavg": _loadavg()})

    interrupted = False
    # A SIGTERM (a cancelled job) stops the run like Ctrl-C: the child is in its own
    # session and would not get it, so the runner must stop it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for i, (t, k) in enumerate(todo, 1):
            label = f"[{i}/{len(todo)}] {t.name}" + (f" (repeat {k + 1})" if args.repeats > 1
                                                     else "")
            reason = t.skip_reason()
            if reason:
                if k == 0:
                    append_record(records_path, skipped_record(t, reason))
                print(f"{label}: skipped: {reason}", file=sys.stderr)
                continue
            print(f"{label}: training...", file=sys.stderr, flush=True)
            record = run_framework(t, k, settings, init_path, out, timeout_s, peak,
                                   args.keep_checkpoints)
            append_record(records_path, record)
            print(f"{label}: {_summary_line(record)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: what finished is in {_rel(records_path)}; "
              "continue with the same flags and --resume", file=sys.stderr)

    if not args.no_report:
        try:
            from benchmarks import report
        except ImportError as exc:
            print(f"no report: {exc} (the report needs the modern environment's pandas and "
                  f"matplotlib: .venv/bin/python -m benchmarks.report {_rel(out)})",
                  file=sys.stderr)
        else:
            report_args = [str(out)] + (["--compare-original"] if settings.profile == "full"
                                        else [])
            try:
                report.main(report_args)
            except SystemExit as exc:  # a report problem must not hide the records' status
                print(f"no report: {exc}", file=sys.stderr)
    if interrupted:
        return 130
    finished = [r for r in read_jsonl(records_path) if r.get("kind") == "framework"]
    return 0 if any(r.get("status") == "ok" for r in finished) else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _summary_line(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status'].upper()} at {record['stage']}: {record['error']}"
    last = record["epochs"][-1]
    gen = record.get("generation") or {}
    steps = [e["step_s_median"] for e in record["epochs"] if e.get("step_s_median")]
    val = last["val/loss"] if last["val/loss"] is not None else float("nan")
    return (f"ok: {last['step']} steps, median step "
            f"{1000 * statistics.median(steps or [0]):.0f} ms, "
            f"train loss {last['train/loss']:.4f}, val loss {val:.4f}, "
            f"peak {record['train_process']['max_rss_mb']:.0f} MiB, "
            f"generation {gen.get('chars_per_s', 0):.0f} chars/s")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before any framework started: nothing to keep
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
