"""Run every framework the same way, one fresh process each, and record what happened.

    python -m benchmarks.run_all                                  # quick profile, all frameworks
    python -m benchmarks.run_all --profile full                   # the original table: 32 epochs
    python -m benchmarks.run_all --frameworks numpy,pytorch --max-steps 20
    python -m benchmarks.run_all --repeats 3                      # A B C, A B C, A B C
    python -m benchmarks.run_all --resume                         # go on after Ctrl-C or a crash

Every framework gets the same corpus, the same portable initial weights (written
once per run from --random-seed), the same flags and the same thread count, and
trains in a fresh process under its own environment's interpreter, with the
thread variables set before anything is imported (benchmarks.child). Then its
`generate` command produces --gen-length characters from the checkpoint it just
trained, once as one stream and once as a batch of 64. The float32 matmul peak is
measured right before and right after each run, so that a machine shared with
other work shows in the report. With --repeats N the frameworks take turns (A B C,
A B C, ...), so that a slow spell of the machine falls on several frameworks
rather than on all repeats of one. While a framework trains, a line on stderr
says which run and epoch it is on and about how long the whole run has left.

What a run leaves in --out (default benchmarks/results/<profile>, ignored by git):

    records.jsonl          a "run" record, then one record per framework and repeat,
                           appended as each finishes (benchmarks.records)
    init.safetensors       the shared initial weights
    runs/<framework>/<k>/  train.log, train.jsonl, train.err, generate.out, generate.err,
                           generate_batch.out, generate_batch.err

and then the report of `benchmarks.report` (report.md, results.csv, plots), which
reads only records.jsonl, with its table printed in markdown. A framework that
fails or passes --timeout is recorded as failed with its last stderr line, and the
run goes on; one whose environment is missing is recorded as skipped. Ctrl-C stops
the current child and keeps what is done; --resume skips every framework and
repeat already recorded (ok or failed). The committed reference results are made
from a run's records by `make reference-results` (benchmarks.report --reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import child, records
from benchmarks.child import Plan
from benchmarks.mfu import PEAK_REPEATS, PEAK_SIZE
from common import registry
from common.registry import Entry

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
# a 2-core CPU. Measured on a quiet machine (a 40-step run, 2 threads, default spec): a
# step takes 25 ms (pytorch) to about 210 ms (pytensor, chainer), so one whole epoch of
# 245 steps is 7 s to 70 s per framework and about 270 s for the ten; start-up,
# compilation, validation and `generate --length 1024` add about 80 s. One full epoch
# therefore takes about 6 minutes in all, and seconds per epoch and the epoch-1 losses
# are measured, not extrapolated.
PROFILES = {
    "quick": Profile(1, None, 900,
                     "one epoch (245 steps of 64 x 64 characters) on tinyshakespeare with "
                     "the default model spec from the same initial weights, then one pass "
                     "over the validation text and 1,024 generated characters"),
    "full": Profile(32, None, 24 * 3600,
                    "32 epochs of the default model spec on tinyshakespeare, the original "
                    "suite's table"),
}


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
    text_path: str  # absolute, for the commands; recorded by file name (records.portable)
    text_sha256: str
    extra_train_args: tuple[str, ...]
    device: str
    gen_length: int
    log_every: int
    train_batches: int  # per epoch, as common.batching cuts the text
    chars_per_batch: int

    @property
    def total_steps(self) -> int:
        """Training steps of one framework's run."""
        return total_steps(self.num_epochs, self.max_steps, self.train_batches)

    def identity(self) -> dict:
        """The fields two runs must share for --resume to combine their records."""
        d = dataclasses.asdict(self)
        d.pop("description")
        d["text_path"] = records.portable(self.text_path)
        d["extra_train_args"] = list(d["extra_train_args"])
        return d


def total_steps(num_epochs: int, max_steps: int | None, train_batches: int) -> int:
    whole = num_epochs * train_batches
    return whole if max_steps is None else min(max_steps, whole)


def train_config_from_args(extra: list[str]):
    """The TrainConfig that `train` will see for these extra flags (the one parser, common.cli)."""
    from common.cli import parse_args
    return parse_args(["train", *extra], "run_all")[1]


def steps_per_epoch_and_vocab(text_path: Path, cfg):
    """(train batches per epoch, characters per batch, vocabulary) exactly as common.train
    cuts this text."""
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


def write_init_weights(path: Path, settings: Settings) -> None:
    from common.weights import init_weights, save_portable
    cfg = train_config_from_args(list(settings.extra_train_args))
    _, _, vocab = steps_per_epoch_and_vocab(Path(settings.text_path), cfg)
    config = cfg.model_config(vocab.size)
    save_portable(path, init_weights(config, settings.random_seed), config, vocab,
                  framework="init", random_seed=settings.random_seed)


def resolve_settings(args) -> Settings:
    from common.text import default_corpus_path
    profile = PROFILES[args.profile]
    num_epochs = args.num_epochs if args.num_epochs is not None else profile.num_epochs
    max_steps = profile.max_steps if args.max_steps is None else (args.max_steps or None)
    extra = tuple(shlex.split(args.extra_train_args))
    text_path = Path(args.text_path).resolve() if args.text_path else default_corpus_path()
    custom = ((num_epochs, max_steps) != (profile.num_epochs, profile.max_steps) or extra
              or args.text_path is not None)
    cfg = train_config_from_args(list(extra))
    train_batches, chars_per_batch, _ = steps_per_epoch_and_vocab(text_path, cfg)
    total = total_steps(num_epochs, max_steps, train_batches)
    what = profile.description
    if custom:
        what = (f"{'up to ' if max_steps else ''}{total} training steps "
                f"({total / train_batches:.3g} epochs of {train_batches} batches) on "
                f"{text_path.name}" + (f" with {' '.join(extra)}" if extra else
                                       " with the default model spec"))
    return Settings(
        profile="custom" if custom else args.profile, description=what, num_epochs=num_epochs,
        max_steps=max_steps, threads=args.threads, random_seed=args.random_seed,
        text_path=str(text_path), text_sha256=hashlib.sha256(text_path.read_bytes()).hexdigest(),
        extra_train_args=extra, device=args.device, gen_length=args.gen_length,
        log_every=choose_log_every(train_batches, total), train_batches=train_batches,
        chars_per_batch=chars_per_batch)


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all", description="Benchmark every framework the same "
        "way; results appended to RESULTS/records.jsonl, then the report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="; ".join(f"{k}: {v.description}" for k, v in PROFILES.items()))
    p.add_argument("--frameworks", help="comma-separated names (default: all registered: "
                   + ", ".join(registry.FRAMEWORKS) + ")")
    p.add_argument("--num-epochs", type=int, help="override the profile's epochs")
    p.add_argument("--max-steps", type=int, help="override the profile's step cap "
                   "(0: none, whole epochs)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for every framework (--threads and the OMP/MKL/BLAS variables)")
    p.add_argument("--repeats", type=int, default=1, help="runs per framework, taking turns "
                   "(A B C, A B C); the report gives medians and their min-max")
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
    p.add_argument("--matmul-size", type=int, default=PEAK_SIZE,
                   help="square matrix size of the float32 peak measured before and after "
                   "each framework's run")
    p.add_argument("--matmul-repeats", type=int, default=PEAK_REPEATS,
                   help="timed products of each peak measurement; the best counts")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each framework's trained checkpoint under runs/")
    p.add_argument("--no-report", action="store_true", help="only record; no report at the end")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def parse_args(argv: list[str] | None):
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit("error: --threads and --repeats must be >= 1")
    return args


def select_entries(frameworks: str | None) -> list[Entry]:
    """The registry entries named by --frameworks (all of them by default), in that order."""
    if not frameworks:
        return list(registry.FRAMEWORKS.values())
    names = [n.strip() for n in frameworks.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry.FRAMEWORKS]
    if unknown:
        raise SystemExit(f"error: --frameworks: unknown {', '.join(unknown)}; "
                         f"known: {', '.join(registry.FRAMEWORKS)}")
    if len(set(names)) != len(names):
        raise SystemExit("error: --frameworks: a framework is named twice")
    return [registry.FRAMEWORKS[n] for n in names]


def make_plan(args) -> Plan:
    try:
        settings = resolve_settings(args)
    except SystemExit:
        raise
    except Exception as exc:  # CharRnnError and the like give one line already
        raise SystemExit(f"error: {exc}") from None
    out = (args.out or records.RESULTS_ROOT / settings.profile).resolve()
    timeout_s = args.timeout if args.timeout is not None else PROFILES[args.profile].timeout_s
    return Plan(settings, out, timeout_s, args.keep_checkpoints, args.matmul_size,
                args.matmul_repeats)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def print_commands(entries: list[Entry], plan: Plan) -> None:
    for entry in entries:
        run_dir = plan.run_dir(entry, 0)
        print(f"# {entry.name}\n{shlex.join(child.train_command(entry, plan, run_dir))}\n"
              f"{shlex.join(child.generate_command(entry, plan, run_dir))}\n"
              f"{shlex.join(child.generate_command(entry, plan, run_dir, child.BATCH_SAMPLES))}")


def open_records(plan: Plan, resume: bool) -> list[dict]:
    """The records to keep: with --resume those of the same settings, else none (an earlier
    run's records are moved aside to records.jsonl.prev)."""
    path = plan.records_path
    previous = records.read_records(path)
    if previous and resume:
        before, now = records.previous_settings(previous), plan.settings.identity()
        if before is not None and before != now:
            changed = sorted(k for k in now if before.get(k) != now[k])
            raise SystemExit(f"error: {path}: recorded with different settings "
                             f"({', '.join(changed)}); resume with the same flags or use "
                             "another --out")
        return previous
    if previous:
        backup = path.with_suffix(".jsonl.prev")
        path.replace(backup)
        print(f"starting a new run; the previous records are in {records.portable(backup)}",
              file=sys.stderr)
    return []


def _label(entry: Entry, repeat: int, repeats: int) -> str:
    return entry.name + (f" (repeat {repeat + 1})" if repeats > 1 else "")


def pending(entries: list[Entry], repeats: int, previous: list[dict]) -> list[tuple[Entry, int]]:
    """(entry, repeat) pairs still to run, round-robin: repeat 0 of every framework, then
    repeat 1 of every framework, ... (A B C A B C), so that a slow spell of a shared
    machine is spread over the frameworks instead of landing on one's repeats."""
    done = records.done_runs(previous)
    todo = []
    for k in range(repeats):
        for entry in entries:
            if (entry.name, k) in done:
                print(f"{_label(entry, k, repeats)}: already recorded, skipped (--resume)",
                      file=sys.stderr)
            else:
                todo.append((entry, k))
    return todo


def start_run(plan: Plan, args, entries: list[Entry], resumed: bool) -> None:
    """Write the initial weights and record the run."""
    s = plan.settings
    write_init_weights(plan.init_path, s)
    records.append_record(plan.records_path, records.run_record(
        resumed=resumed, settings=s.identity(), description=s.description,
        peak_check={"size": plan.peak_size, "repeats": plan.peak_repeats},
        timeout_s=plan.timeout_s, frameworks=[e.name for e in entries], repeats=args.repeats))


# ---------------------------------------------------------------------------------------
# Progress: which run and epoch, and about how long the whole run has left
# ---------------------------------------------------------------------------------------


def estimate_left_s(epochs: list[dict], total_steps: int, elapsed_s: float, later: list[str],
                    past: dict[str, list[float]], current: str | None = None) -> float | None:
    """Seconds the run has left: the current framework's run, then the later runs.

    `epochs` are the current run's (framework `current`) epoch records so far (none
    between runs), `elapsed_s` how long it has taken, `later` the framework of each run
    still to come, `past` the seconds each framework's finished runs took. The current
    run's training goes on at its rate so far (training and validation per step), or
    takes as long as that framework's last run if that is longer (generation and the
    peaks come after training); a later run takes as long as that framework's last
    one, else the median of all finished runs, else as long as the current one will.
    None when nothing has finished yet.
    """
    current_left, current_total = 0.0, None
    if epochs and epochs[-1].get("step"):
        done = epochs[-1]["step"]
        spent = sum((e.get("duration_s") or 0.0) + (e.get("val_duration_s") or 0.0)
                    for e in epochs)
        current_left = max(total_steps - done, 0) * spent / done
        if past.get(current):
            current_left = max(current_left, past[current][-1] - elapsed_s)
        current_total = elapsed_s + current_left
    finished = [s for runs in past.values() for s in runs]
    typical = statistics.median(finished) if finished else current_total
    if typical is None:
        return None
    return current_left + sum(past[name][-1] if past.get(name) else typical for name in later)


def format_left(seconds: float | None) -> str:
    """"~41 min left", for a progress line; "time left unknown" without an estimate."""
    if seconds is None:
        return "time left unknown"
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s left"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min left"
    return f"~{seconds / 3600:.1f} h left"


def progress_line(label: str, epochs: list[dict], settings: Settings, left_s: float | None) -> str:
    """"[3/10] jax: epoch 5/32, ~41 min left" (the epoch of the last record written)."""
    planned = math.ceil(settings.total_steps / settings.train_batches)
    return f"{label}: epoch {epochs[-1]['epoch']}/{planned}, {format_left(left_s)}"


def past_run_seconds(previous: list[dict]) -> dict[str, list[float]]:
    """Seconds each framework's finished runs took, from records (those of a --resume)."""
    past: dict[str, list[float]] = {}
    for r in previous:
        seconds = records.run_seconds(r) if r.get("kind") == "framework" else None
        if seconds is not None and r.get("status") != "skipped":
            past.setdefault(r["framework"], []).append(seconds)
    return past


def run_frameworks(todo: list[tuple[Entry, int]], plan: Plan, repeats: int,
                   previous: list[dict]) -> bool:
    """Run and record each (entry, repeat) in turn; whether Ctrl-C (or SIGTERM) stopped it."""
    # A SIGTERM (a cancelled job) stops the run like Ctrl-C: the child is in its own
    # session and would not get it, so the runner must stop it.
    signal.signal(signal.SIGTERM, _interrupt)
    past = past_run_seconds(previous)
    try:
        for i, (entry, k) in enumerate(todo, 1):
            label = f"[{i}/{len(todo)}] {_label(entry, k, repeats)}"
            later = [e.name for e, _ in todo[i:]]
            reason = child.skip_reason(entry)
            if reason:
                if k == 0:
                    records.append_record(plan.records_path, records.skipped_record(
                        entry.name, entry.env, entry.script, child.interpreter(entry.env),
                        reason))
                print(f"{label}: skipped: {reason}", file=sys.stderr)
                continue
            print(f"{label}: training...", file=sys.stderr, flush=True)
            start = time.perf_counter()

            def on_epochs(epochs, label=label, later=later, start=start, name=entry.name):
                left = estimate_left_s(epochs, plan.settings.total_steps,
                                       time.perf_counter() - start, later, past, name)
                print(progress_line(label, epochs, plan.settings, left), file=sys.stderr,
                      flush=True)

            record = child.run_framework(entry, k, plan, on_epochs)
            records.append_record(plan.records_path, record)
            past.setdefault(entry.name, []).append(time.perf_counter() - start)
            left = estimate_left_s([], plan.settings.total_steps, 0.0, later, past)
            print(f"{label}: {_summary_line(record)}"
                  + (f"; {format_left(left)} in the run" if later else ""),
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what finished is in {records.portable(plan.records_path)}; "
              "continue with the same flags and --resume", file=sys.stderr)
        return True
    return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _summary_line(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status'].upper()} at {record['stage']}: {record['error']}"
    last = record["epochs"][-1]
    gen = record.get("generation") or {}
    batch = record.get("generation_batch") or {}
    steps = [e["step_s_median"] for e in record["epochs"] if e.get("step_s_median")]
    val = last["val/loss"] if last["val/loss"] is not None else float("nan")
    peaks = [(record.get(k) or {}).get("peak_flops") for k in ("peak_before", "peak_after")]
    return (f"ok: {last['step']} steps, median step "
            f"{1000 * statistics.median(steps or [0]):.0f} ms, "
            f"train loss {last['train/loss']:.4f}, val loss {val:.4f}, "
            f"{record['train_process']['max_rss_mb']:.0f} MiB, "
            f"generation {gen.get('chars_per_s', 0):.0f} chars/s "
            f"({batch.get('total_chars_per_s') or 0:.0f} for {batch.get('num_samples')} "
            "streams), matmul peak " + " -> ".join(f"{p / 1e9:.1f}" if p else "?" for p in peaks)
            + " GFLOP/s")


def write_report(plan: Plan) -> None:
    """The report of the records (its table to stdout); a problem with it is one line on
    stderr, never a failed run."""
    try:
        from benchmarks import report
    except ImportError as exc:
        print(f"no report: {exc} (the report needs the modern environment's pandas and "
              f"matplotlib: .venv/bin/python -m benchmarks.report {records.portable(plan.out)})",
              file=sys.stderr)
        return
    compare = ["--compare-original"] if plan.settings.profile == "full" else []
    try:
        report.main([str(plan.out), *compare])
    except SystemExit as exc:
        print(f"no report: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entries = select_entries(args.frameworks)
    plan = make_plan(args)
    if args.dry_run:
        print_commands(entries, plan)
        return 0
    plan.out.mkdir(parents=True, exist_ok=True)
    previous = open_records(plan, args.resume)
    todo = pending(entries, args.repeats, previous)
    if todo:
        start_run(plan, args, entries, resumed=bool(previous))
    interrupted = run_frameworks(todo, plan, args.repeats, previous)
    if not args.no_report:
        write_report(plan)
    if interrupted:
        return 130
    finished = [r for r in records.read_records(plan.records_path) if r["kind"] == "framework"]
    return 0 if any(r.get("status") == "ok" for r in finished) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before any framework started: nothing to keep
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
