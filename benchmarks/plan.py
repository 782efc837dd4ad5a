"""What a run is, for the runner (`run_all`) and its children (`child`) alike: the
profiles, the settings that fix what is trained, the plan every framework of a run (or
sweep point) shares, the jobs of a run and a shard's slice of them.

    >>> PROFILES["quick"].num_epochs, Shard(2, 4).holds(1)
    (1, True)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import records
from benchmarks.mfu import PEAK_REPEATS, PEAK_SIZE
from benchmarks.rows import Row, default_rows
from benchmarks.sweep import Grid, Point
from charrnn.common import cli
from charrnn.common.config import BF16_MIXED, CELLS, FP32, TrainConfig

BATCH_SAMPLES = 64  # streams of the batch generation figure (generate --num-samples)
Where = tuple[str | None, Point | None]  # (cell, sweep point) of a run; None, None: the default

# ---------------------------------------------------------------------------------------
# Profiles: what a run trains. Explicit --num-epochs / --max-steps override them.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    num_epochs: int
    max_steps: int | None  # None: whole epochs
    timeout_s: float  # per framework (and sweep point), training and generation each
    description: str
    # TrainConfig fields the profile sets ({"val_fraction": 0.0}); --extra-train-args wins.
    train: dict = field(default_factory=dict)
    sweep: bool = False  # one run per point of `grid` (benchmarks.sweep)
    grid: Grid = Grid()  # a sweep's points without --rnn-sizes and --batch-sizes
    cells: tuple[str, ...] = ("lstm",)  # one run per cell (docs/SPEC.md section 8)
    # One run per data-parallel world size (charrnn.common.launch --nproc W), of the frameworks
    # with a data-parallel path; () for a run of one process, started directly.
    world_sizes: tuple[int, ...] = ()
    threads: int | None = None  # --threads of each process; None: every usable core
    # The rows without --frameworks (benchmarks.rows.default_rows): each framework in each of
    # these precisions its class declares; with `paired`, only the frameworks that declare
    # all of them; then these inference engines' generation rows.
    precisions: tuple[str, ...] = (FP32,)
    paired: bool = False
    engines: tuple[str, ...] = ()
    generate: bool = True  # measure generation (the plan's `generations`); False: none

    def rows(self) -> list[Row]:
        """Its rows without --frameworks; the scaling profile: those with a data-parallel
        path."""
        return default_rows(self.precisions, self.paired, self.engines,
                            data_parallel=bool(self.world_sizes))


# The quick profile must finish in under 15 minutes for all its rows together on a 2-core
# CPU. Measured on a quiet machine (a 40-step run, 2 threads, default spec): a step takes
# 25 ms (pytorch) to about 210 ms (pytensor, chainer), so one whole epoch of 245 steps is
# 7 s to 70 s per framework and about 270 s for the ten; start-up, compilation,
# validation and `generate --length 1024` add about 80 s. One full epoch therefore takes
# about 6 minutes in all, and seconds per epoch and the epoch-1 losses are measured, not
# extrapolated. The six bf16 rows (pytorch, tensorflow, jax, keras on its three backends:
# every framework whose class declares bf16-mixed but the NumPy emulation) train as their
# fp32 rows do, each right after its fp32 row, without generation (it runs in float32):
# about 3 more minutes (a repeat of the reference of 2026-12-06 took 8:13 to 10:03, and
# those six rows, less their generation, 2:42 to 3:11 of it); the onnxruntime row (its
# export, its session options, two generations) about 30 s. 12 to 14 minutes in all.
#
# The sweep profile must finish in 30 minutes on the same machine: 11 rows (the ten
# of the quick reference and chainer[nstep], taken as slow as chainer) x 7 points
# (benchmarks.sweep: rnn sizes 64-512 at batch 64, batch sizes 1-256 at rnn size 128),
# 77 training and 44 generation processes. Estimated from the quick reference
# (amd-epyc-2core/quick): a step of all of them takes 1.04 s at the default point.
# Scaled by each point's training FLOPs (0.28x, 1x, 3.7x, 14.5x over the rnn sizes;
# 1/64x, 0.25x, 1x, 4x over the batch sizes) but never below the default point's, which
# overstates the overhead-bound rows, the seven points take at most 26 x 1.04 = 27 s a
# step of everything, so 24 steps take at most 11 minutes; first steps (compilation)
# add 8 s a point, 1 minute. Start-up and the end-of-run checkpoint take 22 s a point
# (train wall time minus epoch and validation time in the reference), 2.6 minutes;
# generation 33 s a point at rnn size 128, about 3 minutes over the four rnn sizes;
# the two matmul peaks about 1.5 s a run, 2 minutes. At most about 20 minutes in all,
# with room for a loaded machine. Trimmed to stay there: validation (--val-fraction 0;
# at batch size 1 one pass over the 10% held out is 1,742 steps, 70 times the
# training), the 64-stream generation, and generation at the batch-size points (the
# model it generates with is the default point's); kept: all seven points, 24 steps.
# Timed steps: every step but the first counts in the median (common.train), so 24
# steps give 23, at least 20 of them after any warm-up of up to 3 more steps (the
# report counts the warm-up steps of each framework where it is more than the first).
SWEEP_STEPS = 24
PROFILES = {
    "quick": Profile(1, None, 900,
                     "one epoch (245 steps of 64 x 64 characters) on tinyshakespeare with "
                     "the default model spec from the same initial weights, then one pass "
                     "over the validation text and 1,024 generated characters; bf16 rows "
                     "train in bf16-mixed and generate nothing; onnxruntime generates from "
                     "the initial weights and trains nothing",
                     precisions=(FP32, BF16_MIXED), engines=("onnxruntime",)),
    "full": Profile(32, None, 24 * 3600,
                    "32 epochs of the default model spec on tinyshakespeare, the original "
                    "suite's table"),
    "sweep": Profile(1, SWEEP_STEPS, 240,
                     "at each point of the sweep, 24 training steps of 64-character "
                     "sequences on tinyshakespeare (the first, with any compilation, timed "
                     "apart), no validation, then 1,024 generated characters (one stream) at "
                     "each rnn size", train={"val_fraction": 0.0}, sweep=True),
    # What bf16 matrix units can do, where products are large enough to use them: the
    # sweep's 24 steps of the fp32 and the bf16 row of every framework with a bf16 path,
    # at rnn sizes 128, 512 and 1024 (batch 64), no generation (float32 in both rows).
    # Estimated from the quick reference and the training FLOPs (1x, 14.5x and 57x the
    # default's a step at the three sizes): 12 rows, at most about 35 minutes on the
    # 2-core CPU, most of them at rnn size 1024 (a float32 step 2-8 s).
    "sweep-bf16": Profile(1, SWEEP_STEPS, 600,
                          "at rnn sizes 128, 512 and 1024 (batch 64), 24 training steps of "
                          "64-character sequences on tinyshakespeare (the first, with any "
                          "compilation, timed apart) in fp32 and in bf16-mixed, for every "
                          "framework with a bf16 path; no validation, no generation",
                          train={"val_fraction": 0.0}, sweep=True,
                          grid=Grid(rnn_sizes=(128, 512, 1024), batch_sizes=(64,)),
                          precisions=(FP32, BF16_MIXED), paired=True, generate=False),
    # The bf16 rows' loss after real training (issue 29's long run): four epochs of the
    # default spec, the fp32 and the bf16 row of every framework with a bf16 path one after
    # the other, validation after each epoch, no generation (float32 in both rows).
    # Estimated from the quick reference: an epoch of the 14 rows takes about 420 s, so four
    # take 28 minutes, with start-up and validation about 35 on the 2-core CPU.
    "bf16-long": Profile(4, None, 3600,
                         "four epochs (980 steps of 64 x 64 characters) on tinyshakespeare "
                         "with the default model spec from the same initial weights, in fp32 "
                         "and in bf16-mixed for every framework with a bf16 path, then one "
                         "pass over the validation text; no generation",
                         precisions=(FP32, BF16_MIXED), paired=True, generate=False),
    # One epoch of each cell, as the quick profile trains the LSTM: what a GRU and a vanilla
    # RNN cost against the LSTM in each framework (0.75x and 0.25x its matrix FLOPs).
    "cells": Profile(1, None, 900,
                     "one epoch of each cell (lstm, gru, rnn) on tinyshakespeare with the "
                     "default model spec otherwise, each cell from its own initial weights "
                     "(the same in every framework), then one pass over the validation text "
                     "and 1,024 generated characters", cells=CELLS),
    # Data-parallel throughput (docs/SPEC.md section 11): the sweep's 24 steps (the first
    # timed apart) at world sizes 1 and 2, one thread per process so that W processes use
    # W cores and the speedup is the data parallelism's, not more threads'. Both world
    # sizes start through charrnn.common.launch (child.train_command). No validation and no
    # generation: only rank 0 would generate, as one process does. Measured on the 2-core
    # CPU: 71 s for pytorch, tensorflow and jax at both world sizes (steps of 70-150 ms,
    # start-up, compilation and the matmul peaks), so 3 repeats take under 4 minutes.
    "scaling": Profile(1, SWEEP_STEPS, 300,
                       "at world sizes 1 and 2 (`python -m charrnn.common.launch --nproc W`, one "
                       "thread per process), 24 training steps of the default model spec (a "
                       "global batch of 64 x 64 characters, 64 / W rows per process) on "
                       "tinyshakespeare from the same initial weights (the first step, with any "
                       "compilation, timed apart), no validation, no generation",
                       train={"val_fraction": 0.0}, world_sizes=(1, 2), threads=1),
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
    # The train flags every framework's run shares beyond the runner's own (the profile's,
    # --extra-train-args, a sweep point's sizes, the cell): typed, rendered to argv once
    # (child.train_command, through common.cli.to_argv).
    train: TrainConfig
    device: str
    gen_length: int
    log_every: int
    train_batches: int  # per epoch, as common.batching cuts the text
    chars_per_batch: int
    grid: Grid | None = None  # the sweep's points; None for a run of one point
    cells: tuple[str, ...] = ("lstm",)  # --cells: one run per cell
    world_sizes: tuple[int, ...] = ()  # --world-sizes: one run per world; (): one process

    @property
    def total_steps(self) -> int:
        """Training steps of one framework's run."""
        return total_steps(self.num_epochs, self.max_steps, self.train_batches)

    def identity(self) -> dict:
        """The fields two runs must share for --resume to combine their records."""
        d = dataclasses.asdict(self)
        d.pop("description")
        d["text_path"] = records.portable(self.text_path)
        # As the train flags they give: what records have always held, and the report shows.
        d.pop("train")
        d["extra_train_args"] = cli.to_argv(self.train)
        if self.grid:  # as JSON reads it back; a run of one point has no key (older records)
            d["grid"] = self.grid.as_dict()
        else:
            d.pop("grid")
        if self.cells == ("lstm",):  # likewise: records from before --cells have none
            d.pop("cells")
        else:
            d["cells"] = list(self.cells)
        if self.world_sizes:  # and those from before the scaling profile
            d["world_sizes"] = list(self.world_sizes)
        else:
            d.pop("world_sizes")
        return d


def total_steps(num_epochs: int, max_steps: int | None, train_batches: int) -> int:
    whole = num_epochs * train_batches
    return whole if max_steps is None else min(max_steps, whole)


def where_of(cell: str | None, point: Point | None, world_size: int | None = None) -> str:
    """records.where_key of a cell, a sweep point and a world size."""
    return records.where_key(cell, point.key if point else "", world_size)


@dataclass(frozen=True)
class Plan:
    """What every framework of a run (or of one sweep point) shares."""

    settings: Settings  # a sweep point's: its sizes in settings.train, its batches
    out: Path  # the results directory
    timeout_s: float | None  # training, and again generation, per framework
    keep_checkpoints: bool
    peak_size: int = PEAK_SIZE  # the float32 matmul peak measured before and after each run
    peak_repeats: int = PEAK_REPEATS
    point: Point | None = None  # the sweep point; None for a run of one point
    generations: tuple[int, ...] = (1, BATCH_SAMPLES)  # --num-samples of each `generate`
    cell: str | None = None  # the cell of a run over --cells; None: the default LSTM alone
    # The scaling profile: trained as this many processes (charrnn.common.launch); None: one
    # process, started directly.
    world_size: int | None = None

    @property
    def where(self) -> str:
        """records.where_key of this plan's runs: its cell, sweep point and world size."""
        return where_of(self.cell, self.point, self.world_size)

    @property
    def init_path(self) -> Path:
        """The initial weights: one file per cell and sweep point (their sizes shape it);
        every world size starts from the same one."""
        where = where_of(self.cell, self.point)
        return self.out / (f"init-{where.replace(' ', '-')}.safetensors" if where
                           else "init.safetensors")

    @property
    def records_path(self) -> Path:
        return self.out / records.RECORDS_NAME

    def run_dir(self, row: Row, repeat: int) -> Path:
        where = self.out / "runs" / row.slug
        for part in self.where.split():
            where = where / part
        return where / str(repeat)


# ---------------------------------------------------------------------------------------
# Jobs, and a shard's slice of them
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One row's run: a row (a framework in one precision, or an engine), a repeat, its
    cell and sweep point (None, None for the default LSTM outside a sweep) and its world
    size (None: one process, directly)."""

    row: Row
    repeat: int
    point: Point | None = None
    cell: str | None = None
    world_size: int | None = None

    @property
    def where(self) -> str:
        return where_of(self.cell, self.point, self.world_size)

    @property
    def key(self) -> str:
        """What past run times are kept under: the framework, its cell, sweep point and
        world size."""
        return records.run_key(self.row.name, self.where)

    def label(self, repeats: int) -> str:
        return (describe_where(self.row.name, self.cell, self.point, self.world_size)
                + (f" (repeat {self.repeat + 1})" if repeats > 1 else ""))

    def plan(self, plans: dict[Where, Plan]) -> Plan:
        """The plan this run follows: its cell's and point's, at its world size."""
        plan = plans[self.cell, self.point]
        return dataclasses.replace(plan, world_size=self.world_size) if self.world_size else plan


def describe_where(name: str, cell: str | None, point: Point | None,
                   world_size: int | None = None) -> str:
    """"pytorch", "pytorch (gru)", "pytorch at rnn256-batch64", "pytorch with 2 processes"."""
    return (name + (f" ({cell})" if cell else "") + (f" at {point.key}" if point else "")
            + (f" with {world_size} process{'es' if world_size > 1 else ''}" if world_size
               else ""))


@dataclass(frozen=True)
class Shard:
    """The K-th of N slices of a run's jobs (--shard K/N, K from 1)."""

    index: int  # K
    count: int  # N

    def holds(self, i: int) -> bool:
        """Whether job i (from 0) of the whole ordered list is this shard's."""
        return i % self.count == self.index - 1

    @property
    def name(self) -> str:
        """Its default results directory, under the profile's: "shard-2-of-4"."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """--shard "2/4" -> Shard(2, 4); one line for anything but K/N with 1 <= K <= N."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip(), flags=re.ASCII)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise SystemExit(f"error: --shard {text}: expected K/N with 1 <= K <= N, e.g. "
                         "--shard 1/4 for the first of four slices")
    return Shard(int(match[1]), int(match[2]))
