"""Run every framework the same way, one fresh process each, and record what happened.

    python -m benchmarks.run_all                                  # quick profile, all frameworks
    python -m benchmarks.run_all --profile full                   # the original table: 32 epochs
    python -m benchmarks.run_all --frameworks numpy,pytorch --max-steps 20
    python -m benchmarks.run_all --repeats 3                      # A B C, A B C, A B C
    python -m benchmarks.run_all --resume                         # go on after Ctrl-C or a crash
    python -m benchmarks.run_all --profile sweep                  # cost vs model and batch size
    python -m benchmarks.run_all --profile sweep --frameworks pytorch,numpy \
        --rnn-sizes 64,128 --batch-sizes 1,16                     # a smaller sweep
    python -m benchmarks.run_all --profile scaling                # data-parallel, 1 and 2 processes
    python -m benchmarks.run_all --shard 2/4                      # the second quarter of the runs
    python -m benchmarks.run_all --frameworks pytorch,pytorch[bf16],onnxruntime   # rows by name

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

A row is a framework in one precision, or an inference engine (benchmarks.rows): the
quick profile adds a bf16 row ("pytorch[bf16]", "keras[jax,bf16]") right after the
fp32 row of every framework whose class declares `--precision bf16-mixed` (the NumPy
reference's emulation only when named), and the onnxruntime row, which generates from
the initial weights exported to ONNX and trains nothing. --frameworks names rows.
The sweep-bf16 profile compares the two precisions at rnn sizes up to 1024, the bf16-long
profile their losses after four epochs.

The sweep profile (benchmarks.sweep) runs every framework once per point of a grid
of model and batch sizes, each point a run of its own with its own initial weights
and record, the frameworks taking turns at each point; its report plots step time,
MFU, throughput and memory against the sizes and fits each framework's scaling
exponent (benchmarks.sweep_report).

The scaling profile trains every framework with a data-parallel path (the registry's
`data_parallel`) as a world of 1 and of 2 processes on this machine (`python -m
common.launch --nproc W`, one thread each, docs/SPEC.md section 11), each world size
a run of its own with its own record ("world_size"); its report adds the global
batch's throughput at each world size, the speedup and the scaling efficiency.

--shard K/N runs the K-th of N slices of the whole ordered list of runs (every
framework, repeat, cell, sweep point and world size, taken in turn as above: run i
belongs to shard i mod N + 1), into its own --out (default
benchmarks/results/<profile>/shard-K-of-N), so that N machines (a Slurm job array,
docs/CLUSTER.md) share one benchmark; `python -m benchmarks.report DIR DIR ...` then
merges their records into one report. --resume works within a shard.

What a run leaves in --out (default benchmarks/results/<profile>, ignored by git):

    records.jsonl          a "run" record, then one record per framework and repeat,
                           appended as each finishes (benchmarks.records)
    init.safetensors       the shared initial weights
    runs/<framework>/<k>/  train.log, train.jsonl, train.err, generate.out, generate.err,
                           generate_batch.out, generate_batch.err
                           (a sweep: init-<point>.safetensors, runs/<framework>/<point>/<k>/;
                           the scaling profile: runs/<framework>/w<W>/<k>/; a bf16 row:
                           runs/pytorch-bf16/<k>/, no generation)
    runs/onnxruntime/<k>/  model.onnx, model.step.onnx, session.json, prepare.out,
                           prepare.err, generate.out, generate.err, ...

and then the report of `benchmarks.report` (report.md, results.csv, plots), which
reads only records.jsonl, with its table printed in markdown. A framework that
fails or passes --timeout is recorded as failed with its last stderr line, and the
run goes on; one whose environment is missing is recorded as skipped. Ctrl-C stops
the current child and keeps what is done; --resume skips every framework, repeat
(and sweep point) already recorded (ok or failed). The committed reference results are made
from a run's records by `make reference-results` (benchmarks.report --reference).
"""

from __future__ import annotations

if __name__ == "__main__":  # from any Python: re-run under the environment that has pandas
    from charrnn.common.bootstrap import require_environment
    require_environment("modern", "pandas", "make setup, or pip install 'char-rnn-bench[bench]'")

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
from pathlib import Path

from benchmarks import child, records
from benchmarks.mfu import PEAK_REPEATS, PEAK_SIZE
from benchmarks.plan import (  # noqa: F401 (PROFILES, SWEEP_STEPS: the runner's, for tests)
    PROFILES,
    SWEEP_STEPS,
    Job,
    Plan,
    Profile,
    Settings,
    Shard,
    Where,
    describe_where,
    parse_shard,
    total_steps,
)
from benchmarks.rows import Row, select_rows
from benchmarks.sweep import Grid, Point, parse_sizes
from charrnn.common import cli, registry
from charrnn.common.config import CELLS, DEVICES, GenerateConfig, TrainConfig

# The train flags the runner gives each run itself (child.train_command), from its own
# flags or per run: --extra-train-args may not set them. The flag to use instead, if any.
RUNNER_TRAIN_FLAGS = {"num_epochs": "--num-epochs", "max_steps": "--max-steps",
                      "threads": "--threads", "random_seed": "--random-seed",
                      "device": "--device", "text_path": "--text-path", "cell": "--cells",
                      "precision": "--frameworks NAME[bf16]",
                      "init_from": None, "checkpoint_path": None, "log_path": None,
                      "log_every": None, "sample_length": None, "checkpoint_minutes": None,
                      "restore": None}


def user_train_config(text: str, profile: Profile) -> tuple[TrainConfig, bool]:
    """The train settings of a run: the profile's, then --extra-train-args over them, parsed
    once by common.cli's parser (its one-line errors); and whether the user set any."""
    argv = shlex.split(text)
    user = cli.parse_args(["train", *argv], "run_all --extra-train-args")[1]
    given = cli.flags_given(["train", *argv])
    owned = [name for name in RUNNER_TRAIN_FLAGS if name in given]
    if owned:
        name, instead = owned[0], RUNNER_TRAIN_FLAGS[owned[0]]
        raise SystemExit(f"error: --extra-train-args: --{name.replace('_', '-')} is the runner's "
                         "to set for each run" + (f"; use run_all's {instead}" if instead else ""))
    profile_only = {k: v for k, v in profile.train.items() if k not in given}
    return dataclasses.replace(user, **profile_only), bool(given)


def steps_per_epoch_and_vocab(text_path: Path, cfg):
    """(train batches per epoch, characters per batch, vocabulary) exactly as common.train
    cuts this text."""
    from charrnn.common.batching import make_streams
    from charrnn.common.text import Vocab, read_text
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
    from charrnn.common.weights import init_weights, save_portable
    cfg = settings.train
    _, _, vocab = steps_per_epoch_and_vocab(Path(settings.text_path), cfg)
    config = cfg.model_config(vocab.size)
    save_portable(path, init_weights(config, settings.random_seed), config, vocab,
                  framework="init", random_seed=settings.random_seed)


def sweep_grid(args, profile: Profile) -> Grid | None:
    """The grid of a sweep (--rnn-sizes and --batch-sizes over the profile's axes), else
    None."""
    if not profile.sweep:
        if args.rnn_sizes or args.batch_sizes:
            raise SystemExit("error: --rnn-sizes and --batch-sizes need --profile sweep (or "
                             "sweep-bf16)")
        return None
    grid = profile.grid
    return dataclasses.replace(
        grid, rnn_sizes=parse_sizes(args.rnn_sizes, "--rnn-sizes") if args.rnn_sizes
        else grid.rnn_sizes, batch_sizes=parse_sizes(args.batch_sizes, "--batch-sizes")
        if args.batch_sizes else grid.batch_sizes)


def parse_cells(text: str | None, profile: Profile) -> tuple[str, ...]:
    """--cells "lstm,gru" -> ("lstm", "gru"), the profile's cells without it; one line
    naming the flag for an unknown cell, a repeat, or several cells in a sweep or a
    scaling run."""
    if text is None:
        return profile.cells
    cells = tuple(w.strip() for w in text.split(",") if w.strip())
    unknown = [c for c in cells if c not in CELLS]
    if not cells or unknown or len(set(cells)) != len(cells):
        raise SystemExit(f"error: --cells {text}: expected distinct cells from "
                         f"{','.join(CELLS)}")
    if profile.sweep and len(cells) > 1:
        raise SystemExit("error: --cells: a sweep measures one cell (its report fits one curve "
                         "per framework); run one sweep per cell with --out")
    if profile.world_sizes and len(cells) > 1:
        raise SystemExit("error: --cells: a scaling run measures one cell (its table has a "
                         "row per framework); run one per cell with --out")
    return cells


def parse_world_sizes(args, profile: Profile, batch_size: int) -> tuple[int, ...]:
    """--world-sizes "1,2,4" (the profile's without it), each dividing --batch-size; one
    line naming the flag otherwise, or without --profile scaling."""
    if not profile.world_sizes:
        if args.world_sizes:
            raise SystemExit("error: --world-sizes needs --profile scaling")
        return ()
    sizes = (parse_sizes(args.world_sizes, "--world-sizes") if args.world_sizes
             else profile.world_sizes)
    bad = [w for w in sizes if batch_size % w]
    if bad:
        raise SystemExit(f"error: --world-sizes {','.join(map(str, sizes))}: --batch-size "
                         f"{batch_size} does not divide among {bad[0]} processes (each trains "
                         "batch_size / W rows)")
    return sizes


def describe_grid(grid: Grid) -> str:
    """"--rnn-size 64, 128 at --batch-size 64 and --batch-size 1, 16 at --rnn-size 128"."""
    def sizes(values):
        return ", ".join(map(str, values))
    return (f"--rnn-size {sizes(grid.rnn_sizes)} at --batch-size {grid.batch_size} and "
            f"--batch-size {sizes(grid.batch_sizes)} at --rnn-size {grid.rnn_size}")


def resolve_settings(args) -> Settings:
    from charrnn.common.text import default_corpus_path
    profile = PROFILES[args.profile]
    num_epochs = args.num_epochs if args.num_epochs is not None else profile.num_epochs
    max_steps = profile.max_steps if args.max_steps is None else (args.max_steps or None)
    train, user_extra = user_train_config(args.extra_train_args, profile)
    grid = sweep_grid(args, profile)
    cells = parse_cells(args.cells, profile)
    threads = args.threads or profile.threads or len(os.sched_getaffinity(0))
    text_path = Path(args.text_path).resolve() if args.text_path else default_corpus_path()
    world_sizes = parse_world_sizes(args, profile, train.batch_size)
    custom = ((num_epochs, max_steps) != (profile.num_epochs, profile.max_steps) or user_extra
              or args.text_path is not None or (grid is not None and grid != profile.grid)
              or cells != profile.cells or world_sizes != profile.world_sizes)
    train_batches, chars_per_batch, _ = steps_per_epoch_and_vocab(text_path, train)
    total = total_steps(num_epochs, max_steps, train_batches)
    what = profile.description
    if custom:
        what = (f"{'up to ' if max_steps else ''}{total} training steps "
                f"({total / train_batches:.3g} epochs of {train_batches} batches) on "
                f"{text_path.name}" + (f" with {shlex.join(cli.to_argv(train))}"
                                       if train != TrainConfig() else
                                       " with the default model spec"))
    if grid:
        what += f", at each point of the sweep ({describe_grid(grid)})" if custom else \
            f"; the points: {describe_grid(grid)}"
    if custom and cells != ("lstm",):
        what += f", for each cell of {', '.join(cells)}"
    if custom and world_sizes:
        what += (f", at world sizes {', '.join(map(str, world_sizes))} (`python -m "
                 f"charrnn.common.launch --nproc W`, {threads} "
                 f"thread{'s' if threads > 1 else ''} per process)")
    return Settings(
        profile="custom" if custom else args.profile, description=what, num_epochs=num_epochs,
        max_steps=max_steps, threads=threads, random_seed=args.random_seed,
        text_path=str(text_path), text_sha256=hashlib.sha256(text_path.read_bytes()).hexdigest(),
        train=train, device=args.device, gen_length=args.gen_length,
        log_every=choose_log_every(train_batches, total), train_batches=train_batches,
        chars_per_batch=chars_per_batch, grid=grid, cells=cells, world_sizes=world_sizes)


def point_settings(settings: Settings, point: Point | None, cell: str | None = None) -> Settings:
    """The settings of one sweep point and cell: their train flags after the run's, and the
    batches its batch size cuts the text into (the run's own settings for the default
    LSTM outside a sweep)."""
    if point is None and cell is None:
        return settings
    train = point.apply(settings.train) if point else settings.train
    train = dataclasses.replace(train, cell=cell) if cell else train
    train_batches, chars_per_batch, _ = steps_per_epoch_and_vocab(Path(settings.text_path), train)
    total = total_steps(settings.num_epochs, settings.max_steps, train_batches)
    return dataclasses.replace(settings, train=train, train_batches=train_batches,
                               chars_per_batch=chars_per_batch,
                               log_every=choose_log_every(train_batches, total))


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
    p.add_argument("--frameworks", help="comma-separated rows: a framework ("
                   + ", ".join(registry.FRAMEWORKS) + "), a framework in bf16-mixed "
                   "(pytorch[bf16], keras[jax,bf16]: those whose class declares it) or the "
                   "engine onnxruntime (default: the profile's; quick: every framework, "
                   "every bf16 row but numpy[bf16], and onnxruntime)")
    p.add_argument("--num-epochs", type=int, help="override the profile's epochs")
    p.add_argument("--max-steps", type=int, help="override the profile's step cap "
                   "(0: none, whole epochs)")
    p.add_argument("--threads", type=int, help="threads for every framework, per process "
                   "(--threads and the OMP/MKL/BLAS variables) (default: every usable core, "
                   f"{len(os.sched_getaffinity(0))} here; the scaling profile: 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs per framework, taking turns "
                   "(A B C, A B C); the report gives medians and their min-max")
    p.add_argument("--text-path", help="training text (default: tinyshakespeare)")
    p.add_argument("--random-seed", type=int, default=TrainConfig.random_seed,
                   help="seed of the shared initial weights and of generation")
    p.add_argument("--extra-train-args", default="", metavar="'FLAGS'",
                   help="more train flags for every framework, e.g. '--seq-len 16 --batch-size 4 "
                   "--rnn-size 16 --embedding-size 8' (the model sizes shape the initial weights)")
    # The CPU by default, not train's "auto": the reference tables are CPU tables.
    p.add_argument("--device", default="cpu", choices=DEVICES, help="--device of every framework")
    p.add_argument("--gen-length", type=int, default=GenerateConfig.length,
                   help="characters to generate")
    p.add_argument("--timeout", type=float, help="seconds per framework (per point in a "
                   "sweep) for training, and again for generation (default: the profile's)")
    p.add_argument("--cells", metavar="CELL,...", help="train each of these cells "
                   f"({','.join(CELLS)}) in every framework, a run each (default: the "
                   "profile's: lstm, or all three for --profile cells)")
    sweeps = {name: p.grid for name, p in PROFILES.items() if p.sweep}
    p.add_argument("--rnn-sizes", metavar="H,H,...", help="with a sweep's profile: the rnn "
                   "sizes, at the default batch size (default: the profile's: " + "; ".join(
                       f"{name} {','.join(map(str, g.rnn_sizes))}" for name, g in sweeps.items())
                   + ")")
    p.add_argument("--batch-sizes", metavar="B,B,...", help="with a sweep's profile: the batch "
                   "sizes, at the default rnn size (default: the profile's: " + "; ".join(
                       f"{name} {','.join(map(str, g.batch_sizes))}" for name, g in sweeps.items())
                   + ")")
    p.add_argument("--world-sizes", metavar="W,W,...", help="with --profile scaling: the "
                   "numbers of data-parallel processes, each dividing --batch-size (default: "
                   + ",".join(map(str, PROFILES["scaling"].world_sizes)) + ")")
    p.add_argument("--shard", metavar="K/N", help="run only the K-th of N slices of the runs "
                   "(run i of the whole ordered list when i mod N = K - 1), into its own --out; "
                   "merge the shards' records with python -m benchmarks.report DIR DIR ...")
    p.add_argument("--out", type=Path, help="results directory (default: "
                   "benchmarks/results/<profile>, or .../custom when flags override the profile; "
                   "with --shard K/N its subdirectory shard-K-of-N)")
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
    if (args.threads is not None and args.threads < 1) or args.repeats < 1:
        raise SystemExit("error: --threads and --repeats must be >= 1")
    args.shard = parse_shard(args.shard)
    return args


def select_entries(frameworks: str | None, profile: Profile = PROFILES["quick"]) -> list[Row]:
    """The rows named by --frameworks, in that order (benchmarks.rows.select_rows); by
    default the profile's (for the scaling profile those with a data-parallel path: one
    named without is recorded as skipped, run_frameworks). An engine only generates: one
    line for it in a profile that measures no generation."""
    if not frameworks:
        return profile.rows()
    rows = select_rows(frameworks)
    engines = [r.name for r in rows if r.engine]
    if engines and (profile.sweep or profile.world_sizes or not profile.generate):
        raise SystemExit(f"error: --frameworks {engines[0]}: an inference engine generates "
                         "only, and this profile measures training; use --profile quick or "
                         "cells")
    return rows


def _one_line_errors(fn, *args):
    """fn(*args), with an error of the input (CharRnnError and the like, which say what is
    wrong in one line) turned into that line and a non-zero exit."""
    try:
        return fn(*args)
    except SystemExit:
        raise
    except Exception as exc:
        raise SystemExit(f"error: {exc}") from None


def make_plan(args) -> Plan:
    settings = _one_line_errors(resolve_settings, args)
    out = args.out or records.RESULTS_ROOT / settings.profile
    if args.shard and not args.out:
        out = out / args.shard.name
    profile = PROFILES[args.profile]
    timeout_s = args.timeout if args.timeout is not None else profile.timeout_s
    plan = Plan(settings, out.resolve(), timeout_s, args.keep_checkpoints, args.matmul_size,
                args.matmul_repeats)
    # A scaling run measures training alone (PROFILES["scaling"]), and so does sweep-bf16.
    return (dataclasses.replace(plan, generations=())
            if settings.world_sizes or not profile.generate else plan)




def point_plans(plan: Plan) -> dict[Where, Plan]:
    """The plan of each cell and point a framework runs at: the run's own (None, None) for
    the default LSTM outside a sweep. In a sweep, generation is one stream and at the rnn
    sizes only: a batch size does not change the generating model."""
    s = plan.settings
    cells = (None,) if s.cells == ("lstm",) else s.cells
    points = s.grid.points() if s.grid else [None]
    plans = {}
    for cell in cells:
        for point in points:
            if cell is None and point is None:
                plans[cell, point] = plan
                continue
            generations = plan.generations if s.grid is None else (
                (1,) if s.grid.on_rnn_axis(point) and plan.generations else ())
            plans[cell, point] = dataclasses.replace(
                plan, settings=_one_line_errors(point_settings, s, point, cell), point=point,
                cell=cell, generations=generations)
    return plans


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def print_commands(jobs: list[Job], plans: dict[Where, Plan], repeats: int) -> None:
    """Each run's commands (an engine's: prepare, then generate with the default session
    options, which prepare's measurements may change)."""
    for job in jobs:
        plan, row = job.plan(plans), job.row
        run_dir = plan.run_dir(row, job.repeat)
        print(f"# {job.label(repeats)}")
        print(shlex.join(child.prepare_command(row, plan, run_dir) if row.engine
                         else child.train_command(row, plan, run_dir)))
        for num_samples in row.generations(plan.generations):
            print(shlex.join(child.generate_command(row, plan, run_dir, num_samples)))


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


def all_jobs(entries: list[Row], repeats: int, wheres: list[Where] = ((None, None),),
             world_sizes: tuple[int, ...] = ()) -> list[Job]:
    """Every run of the run, round-robin: repeat 0 of every framework, then repeat 1 of
    every framework, ... (A B C A B C), so that a slow spell of a shared machine is
    spread over the frameworks instead of landing on one's repeats. Over cells, sweep
    points and world sizes the frameworks take turns at each (A B C with the LSTM, then
    with the GRU; A B C with one process, then with two)."""
    return [Job(entry, k, point, cell, world_size)
            for k in range(repeats) for cell, point in wheres
            for world_size in (world_sizes or (None,)) for entry in entries]


def pending(entries: list[Row], repeats: int, previous: list[dict],
            wheres: list[Where] = ((None, None),), world_sizes: tuple[int, ...] = (),
            shard: Shard | None = None) -> list[Job]:
    """The runs still to do, in all_jobs' order: with `shard` only its slice of the whole
    list (taken before --resume leaves out what `previous` records as finished)."""
    done = records.done_runs(previous)
    todo = []
    for i, job in enumerate(all_jobs(entries, repeats, wheres, world_sizes)):
        if shard and not shard.holds(i):
            continue
        if (job.row.name, job.repeat, job.where) in done:
            print(f"{job.label(repeats)}: already recorded, skipped (--resume)", file=sys.stderr)
        else:
            todo.append(job)
    return todo


def start_run(plan: Plan, plans: dict[Where, Plan], args, entries: list[Row],
              resumed: bool) -> None:
    """Write the initial weights (one file per cell and sweep point) and record the run."""
    for each in plans.values():
        write_init_weights(each.init_path, each.settings)
    s = plan.settings
    records.append_record(plan.records_path, records.run_record(
        resumed=resumed, settings=s.identity(), description=s.description,
        peak_check={"size": plan.peak_size, "repeats": plan.peak_repeats},
        timeout_s=plan.timeout_s, frameworks=[e.name for e in entries], repeats=args.repeats,
        **({"shard": str(args.shard)} if args.shard else {})))


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
    """Seconds each framework's (at each sweep point) finished runs took, from records
    (those of a --resume), under records.run_key."""
    past: dict[str, list[float]] = {}
    for r in previous:
        seconds = records.run_seconds(r) if r.get("kind") == "framework" else None
        if seconds is not None and r.get("status") != "skipped":
            past.setdefault(records.run_key(r["framework"], records.record_where(r)),
                            []).append(seconds)
    return past


def run_frameworks(todo: list[Job], plans: dict[Where, Plan], repeats: int,
                   previous: list[dict]) -> bool:
    """Run and record each job in turn; whether Ctrl-C (or SIGTERM) stopped it."""
    # A SIGTERM (a cancelled job) stops the run like Ctrl-C: the child is in its own
    # session and would not get it, so the runner must stop it.
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts a background job (`nohup ... &`) with SIGINT ignored, and Python then
    # leaves it ignored: `kill -INT` would do nothing. Ctrl-C's handler, whatever came in.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    past = past_run_seconds(previous)
    reasons: dict[str, str | None] = {}  # why a framework is skipped, asked once per run
    records_path = next(iter(plans.values())).records_path
    try:
        for i, job in enumerate(todo, 1):
            entry, plan = job.row, job.plan(plans)
            label = f"[{i}/{len(todo)}] {job.label(repeats)}"
            later = [j.key for j in todo[i:]]
            if entry.name not in reasons:
                reasons[entry.name] = skip_reason(entry, plan)
                if reasons[entry.name]:  # one record per framework (and shard)
                    records.append_record(records_path, records.skipped_record(
                        entry.name, entry.env, entry.script, entry.python(),
                        reasons[entry.name]))
            if reasons[entry.name]:
                print(f"{label}: skipped: {reasons[entry.name]}", file=sys.stderr)
                continue
            doing = "exporting, measuring its session options" if entry.engine else "training"
            print(f"{label}: {doing}...", file=sys.stderr, flush=True)
            start = time.perf_counter()

            def on_epochs(epochs, label=label, later=later, start=start, plan=plan, key=job.key):
                left = estimate_left_s(epochs, plan.settings.total_steps,
                                       time.perf_counter() - start, later, past, key)
                print(progress_line(label, epochs, plan.settings, left), file=sys.stderr,
                      flush=True)

            record = child.run_framework(entry, job.repeat, plan, on_epochs)
            records.append_record(records_path, record)
            past.setdefault(job.key, []).append(time.perf_counter() - start)
            left = estimate_left_s([], plan.settings.total_steps, 0.0, later, past)
            print(f"{label}: {_summary_line(record)}"
                  + (f"; {format_left(left)} in the run" if later else ""),
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what finished is in {records.portable(records_path)}; "
              "continue with the same flags and --resume", file=sys.stderr)
        return True
    return False


def skip_reason(entry: Row, plan: Plan) -> str | None:
    """Why `entry` cannot run this plan: its environment is missing, or the plan is a
    data-parallel world and the framework has no data-parallel path."""
    if plan.world_size and not entry.data_parallel:
        return ("no data-parallel path (docs/FRAMEWORKS.md); the scaling profile measures the "
                "registry's data_parallel frameworks")
    return child.skip_reason(entry)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _summary_line(record: dict) -> str:
    """One line of what a run did: training (an engine: its session options), generation,
    the peaks (a bf16 row: the bf16 ones beside them)."""
    if record["status"] != "ok":
        return f"{record['status'].upper()} at {record['stage']}: {record['error']}"
    gen = record.get("generation") or {}
    batch = record.get("generation_batch") or {}
    if record.get("engine"):
        parts = [f"ok: session options {records.session_choice(record)}"]
    else:
        last = record["epochs"][-1]
        steps = [e["step_s_median"] for e in record["epochs"] if e.get("step_s_median")]
        parts = [f"ok: {last['step']} steps, median step "
                 f"{1000 * statistics.median(steps or [0]):.0f} ms, "
                 f"first step {last.get('first_step_s') or 0:.2f} s, "
                 f"train loss {last['train/loss']:.4f}"]
        if last["val/loss"] is not None:
            parts.append(f"val loss {last['val/loss']:.4f}")
        parts.append(f"{record['train_process']['max_rss_mb']:.0f} MiB")
    if gen:
        parts.append(f"generation {gen.get('chars_per_s', 0):.0f} chars/s" + (
            f" ({batch.get('total_chars_per_s') or 0:.0f} for {batch.get('num_samples')} "
            "streams)" if batch else ""))

    def peaks(*keys):
        return " -> ".join(f"{p / 1e9:.1f}" if p else "?"
                           for p in ((record.get(k) or {}).get("peak_flops") for k in keys))
    bf16 = (f", bf16 {peaks('peak_bf16_before', 'peak_bf16_after')}"
            if "peak_bf16_before" in record else "")
    return (", ".join(parts) + f", matmul peak {peaks('peak_before', 'peak_after')}{bf16} "
            "GFLOP/s")


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
    entries = select_entries(args.frameworks, PROFILES[args.profile])
    plan = make_plan(args)
    plans = point_plans(plan)
    wheres, world_sizes = list(plans), plan.settings.world_sizes
    if args.dry_run:  # the first repeat's commands, or all a shard's
        repeats = args.repeats if args.shard else 1
        print_commands(pending(entries, repeats, [], wheres, world_sizes, args.shard), plans,
                       repeats)
        return 0
    if args.shard and not pending(entries, args.repeats, [], wheres, world_sizes, args.shard):
        total = len(all_jobs(entries, args.repeats, wheres, world_sizes))
        print(f"shard {args.shard}: no runs (the whole run has {total}); nothing to do",
              file=sys.stderr)
        return 0
    plan.out.mkdir(parents=True, exist_ok=True)
    previous = open_records(plan, args.resume)
    todo = pending(entries, args.repeats, previous, wheres, world_sizes, args.shard)
    if todo:
        start_run(plan, plans, args, entries, resumed=bool(previous))
    interrupted = run_frameworks(todo, plans, args.repeats, previous)
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
