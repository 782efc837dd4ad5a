"""The benchmark report, from the records `run_all` wrote, and nothing else.

    python -m benchmarks.report benchmarks/results/quick
    python -m benchmarks.report benchmarks/results/full --compare-original
    python -m benchmarks.report benchmarks/results/quick --reference   # make reference-results
    python -m benchmarks.report benchmarks/results/quick/shard-*-of-4 --out merged/  # shards

Reads RESULTS_DIR/records.jsonl with pandas, prints the table in markdown and
writes beside the records:

    results.csv          one row per framework (medians over repeats, and the min and max
                         of the time columns), fastest first
    report.md            the machine and its load, the table (ranked by the median-based
                         s/epoch, with flags for a run whose matmul peaks before and after
                         differ by more than 10% and for stalled steps), failures, the
                         step-time distribution, generation (the sampler's share, a batch
                         of 64 streams), libraries, samples
    loss_per_epoch.png   train and validation loss against epochs
    loss_vs_time.png     the same against training seconds
    throughput.png       training and generation characters per second

--compare-original sets the original suite's numbers beside this run's.
--reference publishes the run as this machine's reference results: its records.jsonl
is copied to benchmarks/reference/<machine>/<profile>/ (<machine> is the CPU model
and core count, e.g. amd-epyc-2core: benchmarks.records.machine_slug), the report is
written there, and the results page, docs/RESULTS.md, is written whole again from every
committed reference (`results_page`: a part per machine kind, a section per profile; a
full run's with the original suite's numbers). Those files, and nothing else of a run,
are committed.

Every table of several frameworks of one cell gets an agreement line (how far apart
their last-epoch losses are, against a target of 0.02 nats) and the run's time.

Several directories (the shards of one run, `run_all --shard K/N`, or runs of the
same settings on other machines) are merged: their records, one directory's after the
other, go to --out/records.jsonl (default: merged/ beside the first directory), and
the report of them all is written there. Their settings must be the same. Each
framework record keeps the machine of its own run record; where they come from
several machine kinds (records.machine_slug) the tables get a machine column, a row
per framework and machine, each machine's rows ranked apart, and every ratio (cells,
scaling) within one machine; a sweep or a reference of several kinds is refused.

The scaling profile's records (`run_all --profile scaling`: a "world_size" each) get
a row per framework and world size, and a scaling table: the whole batch's chars/s at
each world size, the speedup over one process and the efficiency (speedup / W).

The records of a sweep (`run_all --profile sweep`) get the sweep's report instead,
from benchmarks.sweep_report: step time, MFU, throughput and memory against model and
batch size, the fastest framework at each point and each one's scaling exponent.
"""

from __future__ import annotations

if __name__ == "__main__":  # from any Python: re-run under the environment that has pandas
    from charrnn.common.bootstrap import require_environment
    require_environment("modern", "pandas", "make setup, or pip install 'char-rnn-bench[bench]'")

import argparse
import json
import math
import shutil
from pathlib import Path

import pandas as pd

from benchmarks import sweep_report
from benchmarks.plot import Curve, plot_losses, plot_throughput
from benchmarks.records import (
    RECORDS_NAME,
    REFERENCE_ROOT,
    machine_slug,
    previous_settings,
    run_seconds,
)
from benchmarks.render import (  # noqa: F401 (SPREAD: for tests)
    SPREAD,
    _cell,
    _machine_kinds,
    _machine_lines,
    _missing,
    _spread_cell,
    _versions_table,
    machine_header,
    markdown_table,
    page_link,
)
from benchmarks.summary import (  # noqa: F401 (peaks: for tests)
    _get,
    _peak_measurements,
    _present,
    _records,
    cell_of,
    load_records,
    peaks,
    results_records,
    summarise,
)
from charrnn.common.config import CELLS
from charrnn.common.fileio import atomic_write_text
from charrnn.common.logs import format_duration
from charrnn.common.paths import ROOT

# The committed results, written whole from benchmarks/reference/ (results_page).
RESULTS_PAGE = ROOT / "docs" / "RESULTS.md"
SAMPLE_CHARS = 500  # of each framework's generated text shown in report.md

# The original suite (yxtay/char-rnn-text-generation) published no results table in any
# README version we could find; its numbers are in its logs/<framework>_model.log at
# commit 8119785 (runs of 2017-09-06, 32 epochs of the default spec on tinyshakespeare,
# 272 batches per epoch because it kept no validation text; machine not recorded):
# "end of training, duration" and the last epoch's mean batch loss.
ORIGINAL_SOURCE = ("yxtay/char-rnn-text-generation, logs/*_model.log at commit 8119785 "
                   "(2017-09-06)")
ORIGINAL = {  # our name: (original script, training seconds, last epoch's train loss)
    "tensorflow": ("tf_model.py", 3003, 1.45795),
    "keras[tensorflow]": ("keras_model.py", 5270, 1.42505),
    "pytorch": ("pytorch_model.py", 5868, 1.32285),
    "chainer": ("chainer_model.py", 4954, 1.2293),
    "mxnet": ("mxnet_model.py", 7348, 1.34199),
}

# Why the original suite's five losses cannot be set against one another (the full
# run's section says it under the comparison).
ORIGINAL_NOT_COMPARABLE = (
    "The original's losses are not comparable with one another: each script built the model "
    "from its own framework's layers with that framework's own initial weights, so its five "
    "rows are five different trainings, ending anywhere from 1.23 to 1.46 nats; here every "
    "row starts from the same weights and sees the same batches, and the spread above is "
    "what is left.")
# How far apart the frameworks' final losses may be after the same training (max - min, in
# nats): the agreement line says whether the run stays within it.
LOSS_SPREAD_TARGET = 0.02

# Two float32 matmul peaks of one run (before and after it) further apart than this,
# as max / min - 1: the machine's speed changed during the run, and the row is flagged.
PEAK_TOLERANCE = 0.10

# The main table of report.md and README, fastest first by s/epoch: (column, header, format).
TABLE = [
    ("framework", "framework", "{}"),
    ("version", "version", "{}"),
    ("s_per_epoch", "s/epoch", "{:,.1f}"),
    ("wall_s_per_epoch", "wall s/epoch", "{:,.1f}"),
    ("chars_per_s", "chars/s", "{:,.0f}"),
    ("step_ms", "step ms", "{:,.1f}"),
    ("first_step_s", "first step s", "{:,.2f}"),
    ("mfu", "MFU", "pct"),
    ("peak_mb", "peak MiB", "{:,.0f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("val_bpc", "val bpc", "{:.3f}"),
    ("gen_chars_per_s", "gen chars/s", "{:,.0f}"),
    ("batch_gen_chars_per_s", "batch gen chars/s", "{:,.0f}"),
    ("flags", "flags", "{}"),
]
# The step-time distribution and what the machine did around each row's runs (one line
# per group of columns).
TIMING_TABLE = [
    ("framework", "framework", "{}"), ("repeats", "runs", "{:.0f}"),
    ("step_ms", "step ms: median", "{:,.1f}"), ("step_p90_ms", "p90", "{:,.1f}"),
    ("step_p99_ms", "p99", "{:,.1f}"), ("step_max_ms", "max", "{:,.1f}"),
    ("stalls", "stalls", "{:,.0f}"),
    ("peak_before_gflops", "peak before GFLOP/s", "{:,.1f}"),
    ("peak_after_gflops", "peak after GFLOP/s", "{:,.1f}"), ("peak_diff", "peaks apart", "pct"),
    ("load", "load average", "{}"),
]
# Generation: one stream, what the sampler costs of it, and a batch.
GENERATION_TABLE = [
    ("framework", "framework", "{}"),
    ("gen_chars_per_s", "chars/s", "{:,.0f}"), ("gen_first_step_s", "first step s", "{:,.3f}"),
    ("gen_sampler_s", "sampler s", "{:,.3f}"), ("gen_sampler_share", "sampler share", "pct"),
    ("gen_model_chars_per_s", "chars/s without sampler", "{:,.0f}"),
    ("batch_gen_chars_per_s", "batch chars/s", "{:,.0f}"),
    ("batch_gen_first_step_s", "batch first step s", "{:,.3f}"),
]
# Over repeats a row shows the median, except: these add up or take the worst.
AGGREGATE = {"stalls": "sum", "peak_diff": "max", "step_max_ms": "max", "load_min": "min",
             "load_max": "max"}


# ---------------------------------------------------------------------------------------
# Records -> one row per framework
# ---------------------------------------------------------------------------------------


def merge_records(results_dirs: list[Path], out: Path) -> None:
    """Write the records of several results directories (the shards of one run, or runs of
    the same settings on other machines), one directory's after the other, to
    OUT/records.jsonl, so that each framework record follows its own run record (and
    machine). One line when their settings differ or OUT is one of them."""
    if any(out.resolve() == d.resolve() for d in results_dirs):
        raise SystemExit(f"error: --out {out}: is one of the merged directories; choose "
                         "another (it gets the merged records.jsonl)")
    merged, first = [], None
    for results_dir in results_dirs:
        records = results_records(results_dir)
        settings = previous_settings(records)
        if settings is None:
            raise SystemExit(f"error: {results_dir / RECORDS_NAME}: no run record, so no "
                             "settings or machine to merge under")
        if first is None:
            first = (results_dir, settings)
        elif settings != first[1]:
            changed = sorted(k for k in {*settings, *first[1]}
                             if settings.get(k) != first[1].get(k))
            raise SystemExit(f"error: {results_dir}: recorded with other settings than "
                             f"{first[0]} ({', '.join(changed)}); merge only runs of the same "
                             "flags")
        merged += records
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECORDS_NAME, "".join(
        json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in merged))


def shows_cells(table: pd.DataFrame) -> bool:
    """Whether the table needs a cell column: a cell other than the LSTM is in it."""
    return "cell" in table and bool((table["cell"] != "lstm").any())


def shows_worlds(table: pd.DataFrame) -> bool:
    """Whether the table needs a processes column: its runs name a world size (the
    scaling profile)."""
    return "world_size" in table and bool(table["world_size"].notna().any())


def shows_machines(table: pd.DataFrame) -> bool:
    """Whether the table needs a machine column: merged records of several machine kinds
    (records.machine_slug), whose times must not be ranked or divided across kinds."""
    return "machine" in table and table["machine"].dropna().nunique() > 1


def row_label(row: dict, cells: bool, worlds: bool = False, machines: bool = False) -> str:
    """A row's name in plots: "pytorch", with what sets it apart from the table's other
    rows of that framework: "pytorch gru", "pytorch W=2", "pytorch (amd-epyc-2core)"."""
    label = f"{row['framework']} {row.get('cell', 'lstm')}" if cells else row["framework"]
    if worlds and not _missing(row.get("world_size")):
        label += f" W={row['world_size']:.0f}"
    if machines and isinstance(row.get("machine"), str):
        label += f" ({row['machine']})"
    return label


def table_label(row: dict, table: pd.DataFrame) -> str:
    """row_label with what `table` shows."""
    return row_label(row, shows_cells(table), shows_worlds(table), shows_machines(table))


def with_cell(columns: list[tuple[str, str, str]], table: pd.DataFrame) -> list:
    """`columns` with the cell after the framework where the table has other cells, then
    the world size where it has several (the scaling profile), and the machine where it
    merges several kinds."""
    where = ([("cell", "cell", "{}")] if shows_cells(table) else []) + (
        [("world_size", "processes", "{:.0f}")] if shows_worlds(table) else []) + (
        [("machine", "machine", "{}")] if shows_machines(table) else [])
    return [columns[0], *where, *columns[1:]]


def _aggregate(runs: pd.DataFrame, numeric: list[str]) -> dict:
    """One value per column over a framework's runs: AGGREGATE's, else the median; and
    SPREAD's columns' min and max (column_min, column_max)."""
    out = {}
    for c in numeric:
        values = runs[c].dropna()
        out[c] = getattr(values, AGGREGATE.get(c, "median"))() if len(values) else None
        if c in SPREAD and len(values):
            out[f"{c}_min"], out[f"{c}_max"] = values.min(), values.max()
    return out


def flags(row: dict) -> str:
    """The flag cell of a row: what says its times are less trustworthy (see flag_notes)."""
    out = []
    diff, stalls = row.get("peak_diff"), row.get("stalls")
    if diff is not None and not math.isnan(diff) and diff > PEAK_TOLERANCE:
        out.append(f"peaks {100 * diff:.0f}% apart¹")
    if stalls is not None and not math.isnan(stalls) and stalls > 0:
        out.append(f"{stalls:.0f} stall{'s' if stalls != 1 else ''}²")
    return ", ".join(out)


def summary_table(frameworks: pd.DataFrame) -> pd.DataFrame:
    """One row per framework, fastest first by s/epoch (median-based; failed and skipped
    ones last): each measurement over its successful repeats (AGGREGATE; the median
    for most), with min and max for SPREAD's columns, and its flags. A row per cell and
    world size where the runs have several, and per machine kind where merged records
    come from several (each machine's rows ranked apart, never pooled)."""
    rows = pd.DataFrame([summarise(r) for r in _records(frameworks)])
    if rows.empty:
        return rows
    # One row per framework, cell, world size and machine, in the order they ran in.
    world = rows["world_size"].fillna(0) if "world_size" in rows else [0] * len(rows)
    machine = rows["machine"].fillna("") if "machine" in rows else [""] * len(rows)
    group = pd.Series(list(zip(rows["framework"], rows["cell"], world, machine)),
                      index=rows.index)
    order = list(dict.fromkeys(group))
    numeric = [c for c in rows.columns if c not in ("framework", "repeat", "world_size")
               and pd.api.types.is_numeric_dtype(rows[c])]
    ok = rows["status"] == "ok"
    grouped = []
    for key in order:
        runs, good = rows[group == key], rows[(group == key) & ok]
        base = (good if len(good) else runs).iloc[-1].to_dict()
        base.update(_aggregate(good if len(good) else runs.iloc[-1:], numeric))
        base["repeats"] = len(good)
        if len(good) == 0:  # failed or skipped every time: show why, from the last one
            base["status"] = runs.iloc[-1]["status"]
        low, high = base.get("load_min"), base.get("load_max")
        base["load"] = f"{low:.1f}–{high:.1f}" if low is not None and high is not None else None
        base["flags"] = flags(base)
        grouped.append(base)
    out = pd.DataFrame(grouped).drop(columns=["repeat"])
    if "s_per_epoch" in out:
        out = out.sort_values("s_per_epoch", kind="stable", na_position="last")
    if shows_machines(out):  # each machine's rows together, in the order the runs were
        kinds = list(dict.fromkeys(machine))
        out = out.sort_values("machine", kind="stable", key=lambda m: m.fillna("").map(
            kinds.index))
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------


def _trained(table: pd.DataFrame) -> list[dict]:
    """The rows of frameworks that trained (ok, or failed only at generation)."""
    trained = table[table["duration_s"].notna()] if "duration_s" in table else table.iloc[0:0]
    return trained.to_dict("records")


def results_table(table: pd.DataFrame) -> str:
    """The main table, fastest first by s/epoch (a scaling run: without the generation
    columns, as it generates nothing)."""
    columns = with_cell(TABLE, table)
    if shows_worlds(table):
        columns = [c for c in columns if c[0] not in ("gen_chars_per_s", "batch_gen_chars_per_s")]
    return markdown_table(_trained(table), columns)


# What the training loop counted as a stall before its log header said so.
STALL_FACTOR_BEFORE_HEADERS = 5.0


def stall_factor(table: pd.DataFrame) -> float:
    """How many times the median a step took to count as a stall: the training loop's
    own figure, from the runs' log headers (common.train.STALL_FACTOR)."""
    values = table.get("stall_factor", pd.Series(dtype=float)).dropna()
    return float(values.max()) if len(values) else STALL_FACTOR_BEFORE_HEADERS


def flag_notes(table: pd.DataFrame) -> list[str]:
    """The footnotes of the flags in the table (only of those that occur)."""
    cells = " ".join(str(f) for f in table.get("flags", pd.Series(dtype=object)).dropna())
    notes = []
    if "¹" in cells:
        notes.append(f"¹ In at least one of this row's runs, the float32 matmul peaks measured "
                     f"right before and right after it differ by more than {PEAK_TOLERANCE:.0%} "
                     "(max / min - 1): the machine's speed changed while it ran (other work on "
                     "a shared machine, or CPU clocks), so its times and MFU are less "
                     "trustworthy than the others'.")
    if "²" in cells:
        notes.append(f"² Training steps that took more than {stall_factor(table):g}x the "
                     "median step (all repeats together): the machine stalled, not the "
                     "framework. They count in wall s/epoch, not in s/epoch.")
    return notes


def loss_agreement(table: pd.DataFrame) -> str | None:
    """One line: how far apart the trained rows' last-epoch train and validation losses
    are (max - min), against LOSS_SPREAD_TARGET; None for fewer than two rows, or for rows
    of different cells (different models: the cells table compares them)."""
    rows = [r for r in _trained(table) if not _missing(r.get("val_loss"))]
    if len(rows) < 2 or shows_cells(table):
        return None
    parts, widest = [], 0.0
    for column, name in (("train_loss", "train"), ("val_loss", "validation")):
        values = sorted((r[column], table_label(r, table)) for r in rows
                        if not _missing(r.get(column)))
        (low, low_name), (high, high_name) = values[0], values[-1]
        widest = max(widest, high - low)
        parts.append(f"{name} loss {high - low:.4f} nats ({low_name} {low:.4f} to "
                     f"{high_name} {high:.4f})")
    verdict = "within" if widest <= LOSS_SPREAD_TARGET else "outside"
    return (f"Agreement: across the {len(rows)} rows the last epoch's losses span "
            + "; ".join(parts) + f" (max - min), {verdict} the target of "
            f"{LOSS_SPREAD_TARGET} nats.")


def run_time(frameworks: pd.DataFrame) -> str | None:
    """One line: how long the whole run took, the frameworks' runs (each start to finish:
    peak checks, training, validation, generation) summed, and first start to last finish
    (larger where the run was stopped and resumed, or the runner waited between runs)."""
    records = _records(frameworks)
    seconds = [s for s in map(run_seconds, records) if s is not None]
    if not seconds:
        return None
    starts = sorted(str(r["started"]) for r in records if r.get("started"))
    ends = sorted(str(r["finished"]) for r in records if r.get("finished"))
    span = run_seconds({"started": starts[0], "finished": ends[-1]}) if starts and ends else None
    return (f"Run time: {format_duration(sum(seconds))}, the {len(seconds)} framework runs "
            "summed (each from its start to its finish: the peak checks, training, "
            "validation and generation)"
            + (f"; first start to last finish {format_duration(span)}" if span else "") + ".")


def summary_lines(table: pd.DataFrame, frameworks: pd.DataFrame) -> list[str]:
    """The agreement and run-time lines that apply (report.md, the full block, stdout)."""
    return [line for line in (loss_agreement(table), run_time(frameworks)) if line]


def problems(table: pd.DataFrame) -> list[str]:
    lines = []
    for row in table.to_dict("records"):
        if row["status"] == "ok":
            continue
        where = f" at {row['stage']}" if isinstance(row.get("stage"), str) else ""
        name = table_label(row, table)
        lines.append(f"- **{name}**: {row['status']}{where}: `{row['error']}`")
    return lines


def compare_original(table: pd.DataFrame) -> str:
    """The original suite's duration and loss beside this run's, as a markdown table."""
    by_name = {r["framework"]: r for r in table.to_dict("records")}
    lines = [f"Original numbers: {ORIGINAL_SOURCE}. Its machine is not recorded, it trained "
             "on the whole text (272 batches per epoch, no validation split; this suite "
             "keeps 10% for validation: 245 batches), and its libraries are of 2017, so "
             "durations compare only roughly.", "",
             "| framework | original script | original duration | original loss "
             "| this run: duration | this run: epochs | this run: train loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, (script, duration, loss) in ORIGINAL.items():
        row = by_name.get(name, {})
        ours = [_cell(row.get("duration_s"), "duration"), _cell(row.get("epochs"), "{:.2f}"),
                _cell(row.get("train_loss"), "{:.4f}")]
        lines.append(f"| {name} | {script} | {format_duration(duration)} | {loss} | "
                     + " | ".join(ours) + " |")
    return "\n".join(lines)


def machine_section(runs: list[dict], table: pd.DataFrame, frameworks: pd.DataFrame) -> list[str]:
    """The lines of report.md's Machine section; merged records of several machine kinds
    get a subsection per kind."""
    kinds = _machine_kinds(runs)
    if len(kinds) <= 1 or "machine" not in frameworks or "machine" not in table:
        return _machine_lines(runs[-1] if runs else {}, table, frameworks)
    lines = []
    for kind in kinds:
        run = [r for r in runs if machine_slug(r.get("machine") or {}) == kind][-1]
        lines += [f"### {kind}", "", *_machine_lines(run, table[table["machine"] == kind],
                                                     frameworks[frameworks["machine"] == kind]),
                  ""]
    return lines[:-1]


def _samples(frameworks: pd.DataFrame) -> list[str]:
    out = []
    for record in _records(frameworks):
        gen = record.get("generation")
        if record.get("repeat", 0) != 0 or not isinstance(gen, dict) or not gen.get("text"):
            continue
        text = gen["text"][:SAMPLE_CHARS].replace("```", "'''")
        out += [f"### {record['framework']}", "", "```", text.rstrip("\n"), "```", ""]
    return out


def _how_to_read(s: dict, table: pd.DataFrame) -> str:
    gen_length = s.get("gen_length")
    return (
        "How to read it: rows are ranked by *s/epoch*, the median training step (after the "
        f"first) times the {s.get('train_batches')} batches of an epoch: it measures the "
        "framework, not the machine's hiccups, and *chars/s* and *MFU* come from the same "
        "median step. *wall s/epoch* is the clock: the epochs' training time (no start-up, "
        "validation or checkpointing) over the epochs trained, slow steps included (a "
        "fraction of an epoch when `--max-steps` stops early, so it includes the first "
        "step). *step ms* is the median step (its distribution is in the step-time table "
        "below); *first step s* is the first step, compilation and warm-up included; *MFU* "
        "is the model's training FLOPs per step (3 x forward matmul FLOPs per character x "
        "characters per batch) over the median step time, as a share of that run's float32 "
        "matmul peak: the mean of the two measured right before and right after it (records "
        "of an older version: the one peak measured at the start, as said above); *peak "
        "MiB* is the training process's maximum resident memory (wait4 `ru_maxrss`); "
        "*losses* are the last epoch's mean training batch loss and the validation loss, in "
        "nats per character (bpc = bits per character); "
        + (WORLDS_HOW_TO_READ if shows_worlds(table) else
           f"*gen chars/s* is `generate --length {gen_length}` from the checkpoint just trained "
           "(top-3 sampling, fixed seed), first step included; *batch gen chars/s* is the same "
           f"with `--num-samples {_batch_samples(table)}`, every stream's characters counted. ")
        + ("Numbers are medians over repeats, with (min–max) where the time columns differ; "
           "the frameworks took turns (A B C, A B C)." if _repeated(table)
           else "One run per framework."))


# The scaling profile's part of _how_to_read, in place of generation's.
WORLDS_HOW_TO_READ = (
    "*processes* is the world size W (`python -m charrnn.common.launch --nproc W`, every W "
    "started the same way): each process trains batch_size / W rows of every batch and "
    "the step time is rank 0's, the gradients' average across the processes included, so "
    "*chars/s* is the whole batch's; its *MFU* is against W times the peak (each process "
    "has that many threads), and *peak MiB* is the largest process's. No generation. ")


def _repeated(table: pd.DataFrame) -> bool:
    return bool((table.get("repeats", pd.Series([1])) > 1).any())


def _batch_samples(table: pd.DataFrame) -> str:
    counts = table.get("batch_gen_samples", pd.Series(dtype=float)).dropna()
    return f"{counts.max():.0f}" if len(counts) else "N"


def timing_section(table: pd.DataFrame) -> list[str]:
    """The step-time distribution and the machine around each row's runs."""
    return [
        "## Step times and the machine", "",
        markdown_table(_trained(table), with_cell(TIMING_TABLE, table)), "",
        "*step ms*: the median step after the first (median of the epochs' medians and of the "
        "repeats); *p90*, *p99*, *max*: of the worst epoch (p90 and p99 the median over "
        f"repeats, max the largest); *stalls*: steps over {stall_factor(table):g}x the median, all "
        "repeats together; *peak before* and *peak after*: the float32 matmul peak right "
        "before and right after the run (medians over repeats); *peaks apart*: their max / "
        f"min - 1, the largest over repeats, flagged above {PEAK_TOLERANCE:.0%}; *load "
        "average*: the 1-minute load average at the starts and ends of its runs (min–max). "
        "A – is a figure the records do not carry (written by an older version).", ""]


def generation_section(table: pd.DataFrame, gen_length) -> list[str]:
    """One stream, the sampler's own cost, and a batch."""
    batch = _batch_samples(table)
    return [
        "## Generation", "",
        markdown_table(_trained(table), with_cell(GENERATION_TABLE, table)), "",
        f"*chars/s*: `generate --length {gen_length}`, one stream, first step included; "
        "*sampler s*: of that time, the time in the sampler (common.sampling, NumPy: the same "
        "code for every framework); *sampler share*: sampler s over the generation time; "
        f"*chars/s without sampler*: {gen_length} / (time - sampler s), what the framework's "
        f"own steps allow; *batch chars/s*: `--num-samples {batch}`, all {batch} streams' "
        f"characters ({batch} x {gen_length}) over the batch's time (the `generated N "
        "characters` line of `generate` counts every stream). A – is a figure the records do "
        "not carry (a `generate` that does not time its sampler, or an older record).", ""]


def render_report(runs: list[dict], table: pd.DataFrame, frameworks: pd.DataFrame,
                  compare: bool) -> str:
    run = runs[-1] if runs else {}
    s = run.get("settings", {})
    first = runs[0] if runs else {}
    lines = [f"# Benchmark: {s.get('profile', '?')} profile", "",
             f"What it trains: {first.get('description', run.get('description', '?'))}.", "",
             machine_header(runs, frameworks), "",
             f"Every framework started from the same initial weights (`--random-seed "
             f"{s.get('random_seed')}`), in a fresh process of its own environment, on "
             f"`{Path(s.get('text_path', '?')).name}` (sha256 {str(s.get('text_sha256'))[:12]}), "
             f"with {s.get('train_batches')} batches of {s.get('chars_per_batch')} characters "
             f"per epoch" + (f" and `{' '.join(s['extra_train_args'])}`"
                             if s.get("extra_train_args") else "") + ".", "",
             results_table(table), ""]
    notes = flag_notes(table)
    if notes:
        lines += ["\n\n".join(notes), ""]
    summary = summary_lines(table, frameworks)
    if summary:
        lines += ["\n\n".join(summary), ""]
    bad = problems(table)
    if bad:
        lines += ["Not in the table, or without a generation speed:", "", *bad, ""]
    lines += [
        _how_to_read(s, table), "",
        "![loss per epoch](loss_per_epoch.png)", "", "![loss versus time](loss_vs_time.png)", "",
        "![throughput](throughput.png)", "",
        *(["## Cells", "", "The median step of each cell and its ratio to the LSTM's; the "
           "GRU has 3/4 of the LSTM's matrix FLOPs and the vanilla RNN 1/4, so a ratio above "
           "those is per-step overhead.", "", cells_table(table), ""]
          if shows_cells(table) else []),
        *(scaling_section(table, s) if shows_worlds(table) else []),
        *timing_section(table),
        *(generation_section(table, s.get("gen_length")) if not shows_worlds(table) else []),
        "## Machine", "", *machine_section(runs, table, frameworks), "",
        _versions_table(table), ""]
    if compare:
        lines += ["## Beside the original suite", "", compare_original(table), ""]
    samples = _samples(frameworks)
    if samples:
        lines += ["## Generated text", "",
                  f"The first {SAMPLE_CHARS} characters of each framework's generated text "
                  "(a 64-character seed from the corpus, then the model's continuation):", "",
                  *samples]
    return "\n".join(lines).rstrip() + "\n"


def cells_table(table: pd.DataFrame) -> str:
    """Per framework, the median step of each cell and its ratio to the LSTM's, and each
    cell's validation loss: what a cell costs here, and that the frameworks agree on it."""
    trained = pd.DataFrame(_trained(table))
    if trained.empty:
        return ""
    cells = [c for c in CELLS if c in set(trained["cell"])]
    # Merged records of several machine kinds: a row per framework and machine, so that a
    # ratio divides two times of one machine.
    machines = shows_machines(table)
    index = ["framework", "machine"] if machines else "framework"
    step = trained.pivot_table(index=index, columns="cell", values="step_ms", aggfunc="first")
    loss = trained.pivot_table(index=index, columns="cell", values="val_loss", aggfunc="first")
    order = step.sort_values(cells[0]).index if cells[0] in step else step.index
    if machines:  # each machine's rows together, fastest first within it
        kinds = list(dict.fromkeys(trained["machine"]))
        order = sorted(order, key=lambda key: kinds.index(key[1]))
    columns = ([f"{c} step ms" for c in cells] + [f"{c} / lstm" for c in cells if c != "lstm"
                                                 and "lstm" in cells]
               + [f"{c} val loss" for c in cells])
    lines = ["| framework | " + ("machine | " if machines else "") + " | ".join(columns) + " |",
             "|---|" + ("---|" if machines else "") + "---:|" * len(columns)]
    for name in order:
        ms = [step.at[name, c] if c in step else None for c in cells]
        ratios = [step.at[name, c] / step.at[name, "lstm"] for c in cells
                  if c != "lstm" and "lstm" in cells and c in step]
        losses = [loss.at[name, c] if c in loss else None for c in cells]
        lines.append(f"| {' | '.join(name) if machines else name} | " + " | ".join(
            [_cell(v, "{:,.1f}") for v in ms] + [_cell(v, "{:.2f}x") for v in ratios]
            + [_cell(v, "{:.4f}") for v in losses]) + " |")
    return "\n".join(lines)


def scaling_rows(table: pd.DataFrame) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """(rows, columns) of the scaling table: per framework, the whole batch's chars/s at
    each world size W of its successful runs, and at each W above the smallest W0 (1)
    the speedup, chars/s at W over chars/s at W0, and the efficiency, speedup / (W / W0).
    A row per framework and machine where merged records come from several kinds, so
    that a speedup divides two rates of one machine."""
    machines = shows_machines(table)
    ok = [r for r in _trained(table)
          if r.get("status") == "ok" and not _missing(r.get("world_size"))]
    worlds = sorted({int(r["world_size"]) for r in ok})
    rows: dict[tuple, dict] = {}
    for r in ok:
        key = (r["framework"], r.get("machine") if machines else None)
        row = rows.setdefault(key, {"framework": r["framework"], "machine": r.get("machine")})
        row[f"chars_per_s@{int(r['world_size'])}"] = r.get("chars_per_s")
    for row in rows.values():
        low = row.get(f"chars_per_s@{worlds[0]}")
        for w in worlds[1:]:
            rate = row.get(f"chars_per_s@{w}")
            if not _missing(low) and not _missing(rate) and low > 0:
                row[f"speedup@{w}"] = rate / low
                row[f"efficiency@{w}"] = rate / low / (w / worlds[0])
    columns = [("framework", "framework", "{}")]
    columns += [("machine", "machine", "{}")] if machines else []
    columns += [(f"chars_per_s@{w}", f"chars/s W={w}", "{:,.0f}") for w in worlds]
    for w in worlds[1:]:
        columns += [(f"speedup@{w}", f"speedup W={w}", "{:.2f}x"),
                    (f"efficiency@{w}", f"efficiency W={w}", "{:.0%}")]
    return list(rows.values()), columns


def scaling_table(table: pd.DataFrame) -> str:
    """The scaling table (scaling_rows) in markdown."""
    rows, columns = scaling_rows(table)
    return markdown_table(rows, columns) if rows else ""


def scaling_section(table: pd.DataFrame, s: dict) -> list[str]:
    """The scaling profile's table and how to read it."""
    rows, _ = scaling_rows(table)
    base = min((int(w) for w in table["world_size"].dropna()), default=1)
    threads = s.get("threads")
    return [
        "## Scaling", "",
        "Training throughput of the whole batch with W data-parallel processes on one "
        f"machine (`python -m charrnn.common.launch --nproc W`, {threads} thread"
        f"{'s' if threads != 1 else ''} each): *chars/s* is the batch's characters over rank "
        "0's median step, which includes averaging the gradients across the processes; "
        f"*speedup* is chars/s at W over chars/s at W={base}; *efficiency* is speedup / "
        + ("W" if base == 1 else f"(W / {base})") + ", 100% where each process adds as much "
        "throughput as the first. The processes share the machine's cores, memory bandwidth "
        "and caches: where W x threads is more than the free cores, they take turns and the "
        "efficiency falls."
        + (" Merged records of several machine kinds: a row per framework and machine, each "
           "speedup within one machine (– where a machine lacks one of the two)."
           if shows_machines(table) else ""), "",
        scaling_table(table) if rows else "No successful run at any world size.", ""]


def run_line(run: dict) -> str:
    """"Profile `quick` on <cpu> (2 threads), <date>": how a section of the page begins."""
    s, m = run.get("settings", {}), run.get("machine", {})
    threads = s.get("threads")
    return (f"Profile `{s.get('profile')}` on {m.get('cpu')} ({threads} "
            f"thread{'s' if threads != 1 else ''}"
            + (" per process" if s.get("world_sizes") else "")
            + f"), {str(run.get('started', ''))[:10]}")


def _cell_training(run: dict) -> str:
    """"one epoch of each cell", or the steps a --max-steps run trained of each."""
    steps = run.get("settings", {}).get("max_steps")
    return (f"{steps} training steps of each cell (`--max-steps {steps}`)" if steps
            else "one epoch of each cell")


# ---------------------------------------------------------------------------------------
# The results page (docs/RESULTS.md): a section per reference directory
# ---------------------------------------------------------------------------------------


def page_cells(table: pd.DataFrame, run: dict, link) -> str:
    """The cost of each cell in each framework."""
    return "\n".join([
        f"{run_line(run)}: {_cell_training(run)}, the median training "
        "step of the default spec otherwise (64 x 64 characters, 2 layers of 128). Full "
        f"report: [{link('report.md')}]({link('report.md')}).", "",
        cells_table(table)])


def page_scaling(table: pd.DataFrame, run: dict, link) -> str:
    """Each data-parallel framework's throughput at each world size, its speedup and
    efficiency."""
    s = run.get("settings", {})
    return "\n".join([
        f"{run_line(run)}: {s.get('max_steps')} training steps at each world size W "
        "(`python -m charrnn.common.launch --nproc W`), the median step of the whole batch "
        f"({s.get('chars_per_batch')} characters, batch_size / W rows per process); "
        "efficiency = speedup / W. Full report: "
        f"[{link('report.md')}]({link('report.md')}).", "",
        scaling_table(table)])


def page_results(table: pd.DataFrame, run: dict, link) -> str:
    """A run of one cell and one process (the quick profile): the table and links to the
    plots and the full report."""
    return "\n".join([
        f"{run_line(run)}; full report: "
        f"[{link('report.md')}]({link('report.md')}). Ranked by *s/epoch*, the median step "
        "times the batches of an epoch (the framework, not the machine's hiccups; MFU and "
        "chars/s use the same median step); *wall s/epoch* is the clock."
        + (" Medians over repeats, (min–max) where they differ." if _repeated(table) else ""),
        "", results_table(table), *[f"\n{note}" for note in flag_notes(table)], "",
        f"![loss per epoch]({link('loss_per_epoch.png')}) "
        f"![loss versus time]({link('loss_vs_time.png')}) "
        f"![throughput]({link('throughput.png')})"])


def page_full(table: pd.DataFrame, runs: list[dict], frameworks: pd.DataFrame, link) -> str:
    """The full run: the table, how far the losses agree, how long it took, the original
    suite's numbers beside it, and the loss plots."""
    summary = summary_lines(table, frameworks)
    return "\n".join([
        f"{run_line(runs[-1])}: {runs[0].get('description', '?')}; full report: "
        f"[{link('report.md')}]({link('report.md')}). Ranked by *s/epoch* (the median step "
        "times the batches of an epoch); *wall s/epoch* is the clock.", "",
        results_table(table), *[f"\n{note}" for note in flag_notes(table)],
        *[f"\n{line}" for line in summary], "",
        compare_original(table), "", ORIGINAL_NOT_COMPARABLE, "",
        f"![loss per epoch]({link('loss_per_epoch.png')}) "
        f"![loss versus time]({link('loss_vs_time.png')})"])


# The headline table the README shows (tests/test_readme.py checks it against the quick
# reference of the page's first kind): the figures a framework chooser reads first.
HEADLINE_COLUMNS = [("framework", "framework", "{}"), ("step_ms", "step ms", "{:.1f}"),
                    ("chars_per_s", "train chars/s", "{:,.0f}"), ("mfu", "MFU", "pct"),
                    ("val_loss", "val loss", "{:.4f}"),
                    ("gen_chars_per_s", "gen chars/s", "{:,.0f}")]


def headline_table(table: pd.DataFrame) -> str:
    """The README's few columns of a quick reference's table, medians only."""
    rows = [{c: r.get(c) for c, _, _ in HEADLINE_COLUMNS} for r in table.to_dict("records")]
    return markdown_table(rows, HEADLINE_COLUMNS)


# The profiles' sections in the order the page shows them; others (a custom run) after.
PAGE_ORDER = ("quick", "cells", "sweep", "scaling", "full")
PAGE_TITLES = {"quick": "One epoch of every framework (quick profile)",
               "cells": "The cells: LSTM, GRU and vanilla RNN (cells profile)",
               "sweep": "Model and batch size (sweep profile)",
               "scaling": "Data-parallel throughput (scaling profile)",
               "full": "32 epochs, the original suite's table (full profile)"}


def reference_dirs(reference_root: Path) -> dict[str, list[Path]]:
    """The committed reference directories per machine kind, the kind of the newest run
    first (the page's and the README's headline), each kind's in PAGE_ORDER."""
    kinds: dict[str, list[Path]] = {}
    for records_path in reference_root.glob(f"*/*/{RECORDS_NAME}"):
        kinds.setdefault(records_path.parent.parent.name, []).append(records_path.parent)

    def started(d: Path) -> str:
        runs = [r for r in results_records(d) if r.get("kind") == "run"]
        return str(runs[-1].get("started", "")) if runs else ""

    def order(d: Path) -> tuple:
        return (PAGE_ORDER.index(d.name) if d.name in PAGE_ORDER else len(PAGE_ORDER), d.name)

    newest = sorted(kinds, key=lambda k: max(map(started, kinds[k])), reverse=True)
    return {k: sorted(kinds[k], key=order) for k in newest}


def page_section(results_dir: Path, page: Path) -> str:
    """The page's section of one reference directory, whatever its profile."""
    runs, frameworks = load_records(results_dir)
    link = page_link(results_dir, page)
    if sweep_report.is_sweep(frameworks):
        table = sweep_report.sweep_table(frameworks)
        return sweep_report.section(table, sweep_report.grid_of(runs), runs[-1], link)
    table = summary_table(frameworks)
    if shows_cells(table):
        return page_cells(table, runs[-1], link)
    if shows_worlds(table):
        return page_scaling(table, runs[-1], link)
    if runs[-1].get("settings", {}).get("profile") == "full":
        return page_full(table, runs, frameworks, link)
    return page_results(table, runs[-1], link)


def results_page(reference_root: Path, page: Path) -> str:
    """docs/RESULTS.md: every committed reference, a part per machine kind (newest first)
    and a section per profile."""
    kinds = reference_dirs(reference_root)
    root = page_link(reference_root, page)("")
    lines = ["# Results", "",
             "Written whole by `python -m benchmarks.report DIR --reference` (the `make "
             f"reference-*` targets) from the committed records under [{root}]({root}): do "
             "not edit by hand. A part per CPU kind (its model, best vector or matrix "
             "extension and core count: the frameworks' ranking moves between kinds, and "
             "[CPU_KINDS.md](CPU_KINDS.md) says how and why), the newest first. Within a "
             "kind the losses are the same in every row: the frameworks train the same "
             "model on the same batches.", ""]
    lines += [f"- [{kind}](#{kind}): " + ", ".join(d.name for d in dirs)
              for kind, dirs in kinds.items()]
    for kind, dirs in kinds.items():
        lines += ["", f"## {kind}"]
        for d in dirs:
            lines += ["", f"### {PAGE_TITLES.get(d.name, d.name + ' profile')}", "",
                      page_section(d, page)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def curves(frameworks: pd.DataFrame) -> list[Curve]:
    """First successful run of each framework, as loss curves."""
    out, seen = [], set()
    cells = len(set(frameworks["cell"])) > 1 or shows_cells(frameworks)
    worlds, machines = shows_worlds(frameworks), shows_machines(frameworks)
    for r in _records(frameworks):
        epochs, label = r.get("epochs"), row_label(r, cells, worlds, machines)
        if label in seen or not isinstance(epochs, list) or not epochs:
            continue
        seen.add(label)
        header = r.get("header") if isinstance(r.get("header"), dict) else {}
        steps = r.get("steps") if isinstance(r.get("steps"), list) else []
        out.append(Curve(label, header.get("train_batches"), epochs, steps))
    return out


def build(results_dir: str | Path, compare: bool = False) -> tuple[pd.DataFrame, str, list[dict]]:
    """Write every report file into `results_dir`; (table, report.md text, run records).
    A sweep's records get the sweep's report (benchmarks.sweep_report), its table one row per
    framework and point."""
    results_dir = Path(results_dir)
    runs, frameworks = load_records(results_dir)
    if sweep_report.is_sweep(frameworks):
        _one_machine_sweep(results_dir, runs)
        return (*sweep_report.build(results_dir, runs, frameworks), runs)
    table = summary_table(frameworks)
    if table.empty:
        raise SystemExit(f"error: {results_dir}: no framework records yet")
    atomic_write_text(results_dir / "results.csv", table.to_csv(index=False))
    profile = (runs[-1].get("settings", {}).get("profile") if runs else None) or "?"
    loss_curves = curves(frameworks)
    plot_losses(loss_curves, results_dir / "loss_per_epoch.png", x="epoch",
                title=f"Loss per epoch ({profile} profile)")
    plot_losses(loss_curves, results_dir / "loss_vs_time.png", x="time",
                title=f"Loss versus training time ({profile} profile)")
    rows = [(table_label(r, table), r.get("chars_per_s"), r.get("gen_chars_per_s"))
            for r in table.to_dict("records")]
    plot_throughput(rows, results_dir / "throughput.png",
                    title=f"Characters per second ({profile} profile)")
    text = render_report(runs, table, frameworks, compare)
    atomic_write_text(results_dir / "report.md", text)
    return table, text, runs


def _one_machine_sweep(results_dir: Path, runs: list[dict]) -> None:
    """A sweep's report ranks the frameworks at each point (benchmarks.sweep_report): one line
    for merged records of several machine kinds, whose times must not be compared."""
    kinds = _machine_kinds(runs)
    if len(kinds) > 1:
        raise SystemExit(f"error: {results_dir}: a sweep's report compares the frameworks at "
                         f"each point, and these records come from {', '.join(kinds)}; merge "
                         "the sweeps of one machine kind")


def publish_reference(results_dir: Path) -> Path:
    """Copy the records of `results_dir` to benchmarks/reference/<machine>/<profile>/ (the
    machine and profile of its run record); that directory."""
    runs, _ = load_records(results_dir)
    if not runs:
        raise SystemExit(f"error: {results_dir / RECORDS_NAME}: no run record, so no machine "
                         "to file the reference under")
    kinds = _machine_kinds(runs)
    if len(kinds) > 1:
        raise SystemExit(f"error: {results_dir}: a reference is one machine's, and these "
                         f"records come from {', '.join(kinds)}")
    run = runs[0]
    dest = REFERENCE_ROOT / machine_slug(run.get("machine", {})) / run["settings"]["profile"]
    if dest.resolve() != results_dir.resolve():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results_dir / RECORDS_NAME, dest / RECORDS_NAME)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", nargs="+", type=Path, metavar="RESULTS_DIR",
                        help="directory with records.jsonl; several (the shards of one run, "
                        "or runs of the same settings on other machines): their records "
                        "merged into --out, and the report of them all written there")
    parser.add_argument("--out", type=Path, help="with several directories: where the merged "
                        "records.jsonl and its report go (default: merged/ beside the first)")
    parser.add_argument("--compare-original", action="store_true",
                        help="print the original suite's duration and loss beside this run's "
                        "(and add them to report.md)")
    parser.add_argument("--reference", action="store_true",
                        help="publish as this machine's committed reference results: copy the "
                        "records to benchmarks/reference/<machine>/<profile>/, report there and "
                        "write docs/RESULTS.md again from every committed reference")
    args = parser.parse_args(argv)
    results_dir = args.results_dirs[0]
    if len(args.results_dirs) > 1:
        results_dir = args.out or results_dir.parent / "merged"
        merge_records(args.results_dirs, results_dir)
        print(f"merged {len(args.results_dirs)} directories' records into "
              f"{results_dir / RECORDS_NAME}")
    elif args.out:
        raise SystemExit("error: --out is where several directories' merged records go; one "
                         "directory's report is written beside its records")
    results_dir = publish_reference(results_dir) if args.reference else results_dir
    runs, frameworks = load_records(results_dir)
    if sweep_report.is_sweep(frameworks):
        _one_machine_sweep(results_dir, runs)
        sweep_report.main(results_dir, runs, frameworks)
    else:
        print_report(results_dir, frameworks, args.compare_original)
    if args.reference:
        atomic_write_text(RESULTS_PAGE, results_page(REFERENCE_ROOT, RESULTS_PAGE))
        print(f"wrote {RESULTS_PAGE.relative_to(ROOT)}")


def print_report(results_dir: Path, frameworks: pd.DataFrame, compare: bool) -> None:
    """Build a run's report and print its tables and summary lines."""
    table, _, _ = build(results_dir, compare=compare)
    print(results_table(table))
    if shows_worlds(table):
        print()
        print(scaling_table(table))
    for line in problems(table):
        print(line)
    for line in summary_lines(table, frameworks):
        print(f"\n{line}")
    if compare:
        print()
        print(compare_original(table))
    print(f"\nreport: {results_dir / 'report.md'}")


if __name__ == "__main__":
    main()
