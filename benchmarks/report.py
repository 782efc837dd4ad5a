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
from benchmarks.render import (  # noqa: F401 (_spread_cell: for tests)
    _machine_kinds,
    _machine_lines,
    _missing,
    _spread_cell,
    _versions_table,
    by_machine,
    machine_header,
    markdown_table,
    page_link,
    render,
    sentence,
)
from benchmarks.rows import fp32_name
from benchmarks.summary import (  # noqa: F401 (SPREAD, peaks: for tests)
    GENERATION_COLUMNS,
    SPREAD,
    _records,
    aggregate_repeats,
    generates,
    load_records,
    peaks,
    results_records,
    summarise,
)
from charrnn.common.config import BF16_MIXED, CELLS, FP32
from charrnn.common.fileio import atomic_write_text
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
ORIGINAL = pd.DataFrame([  # our name, the original script, training seconds, last train loss
    ("tensorflow", "tf_model.py", 3003, 1.45795),
    ("keras[tensorflow]", "keras_model.py", 5270, 1.42505),
    ("pytorch", "pytorch_model.py", 5868, 1.32285),
    ("chainer", "chainer_model.py", 4954, 1.2293),
    ("mxnet", "mxnet_model.py", 7348, 1.34199),
], columns=["framework", "script", "original_s", "original_loss"])

# How far apart the frameworks' final losses may be after the same training (max - min, in
# nats): the agreement line says whether the run stays within it.
LOSS_SPREAD_TARGET = 0.02
# How far a bf16-mixed row's validation loss may be from its fp32 row's after the same
# training (issue 29's target for the long run; docs/SPEC.md section 12).
BF16_LOSS_TARGET = 0.02
# How much faster a bf16-mixed row's median step should be than its fp32 row's at the
# default spec (issue 29's targets: 3x for PyTorch, 2x for the others, or a profiled
# reason, which docs/FRAMEWORKS.md gives per row): read from a run, never asserted.
BF16_SPEEDUP_TARGETS = {"pytorch": 3.0}
BF16_SPEEDUP_TARGET = 2.0

# Two float32 matmul peaks of one run (before and after it) further apart than this,
# as max / min - 1: the machine's speed changed during the run, and the row is flagged.
PEAK_TOLERANCE = 0.10

# The tables' columns: (column, header, format); "{}" is text, left-aligned (render._cell).
# The main table of report.md and the results page, fastest first by s/epoch.
TABLE = [
    ("framework", "framework", "{}"), ("version", "version", "{}"),
    ("s_per_epoch", "s/epoch", "{:,.1f}"), ("wall_s_per_epoch", "wall s/epoch", "{:,.1f}"),
    ("chars_per_s", "chars/s", "{:,.0f}"), ("step_ms", "step ms", "{:,.1f}"),
    ("first_step_s", "first step s", "{:,.2f}"), ("mfu", "MFU", "pct"),
    ("peak_mb", "peak MiB", "{:,.0f}"), ("train_loss", "train loss", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"), ("val_bpc", "val bpc", "{:.3f}"),
    ("gen_chars_per_s", "gen chars/s", "{:,.0f}"),
    ("batch_gen_chars_per_s", "batch gen chars/s", "{:,.0f}"), ("flags", "flags", "{}"),
]
# The step-time distribution and what the machine did around each row's runs.
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
    ("gen_peak_mb", "peak MiB", "{:,.0f}"), ("batch_gen_peak_mb", "batch peak MiB", "{:,.0f}"),
]
# The session options an inference engine row measured before its timed generations.
SESSION_TABLE = [
    ("framework", "engine", "{}"), ("num_samples", "streams", "{:.0f}"),
    ("intra_op_threads", "intra-op threads", "{:.0f}"), ("optimization", "optimisation", "{}"),
    ("chars_per_s", "chars/s", "{:,.0f}"), ("kept", "kept", "{}"),
]
# What a row shows instead of figures that do not apply to it: an engine's training, a bf16
# row's generation (it would run in float32, as its fp32 row's does).
NOT_APPLICABLE = "n/a"
TRAINING_COLUMNS = ("s_per_epoch", "wall_s_per_epoch", "chars_per_s", "step_ms",
                    "first_step_s", "mfu", "peak_mb", "train_loss", "val_loss", "val_bpc")
# The original suite's numbers beside a run's (compare_original).
ORIGINAL_TABLE = [
    ("framework", "framework", "{}"), ("script", "original script", "{}"),
    ("original_s", "original duration", "duration"), ("original_loss", "original loss", "{!s}"),
    ("duration_s", "this run: duration", "duration"), ("epochs", "this run: epochs", "{:.2f}"),
    ("train_loss", "this run: train loss", "{:.4f}"),
]
# The headline table the README shows (tests/test_readme.py checks it against the quick
# reference of the page's first kind): the figures a framework chooser reads first.
HEADLINE_COLUMNS = [("framework", "framework", "{}"), ("step_ms", "step ms", "{:.1f}"),
                    ("chars_per_s", "train chars/s", "{:,.0f}"), ("mfu", "MFU", "pct"),
                    ("val_loss", "val loss", "{:.4f}"),
                    ("gen_chars_per_s", "gen chars/s", "{:,.0f}")]


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


def flags(row: dict) -> str:
    """The flag cell of a row: what says its times are less trustworthy (see flag_notes)."""
    out = []
    diff, stalls = row.get("peak_diff"), row.get("stalls")
    if diff is not None and not math.isnan(diff) and diff > PEAK_TOLERANCE:
        out.append(f"peaks {100 * diff:.0f}% apart¹")
    if stalls is not None and not math.isnan(stalls) and stalls > 0:
        out.append(f"{stalls:.0f} stall{'s' if stalls != 1 else ''}²")
    if row.get("precision") == BF16_MIXED and row.get("bf16_units") == "":
        out.append("bf16 emulated³")
    return ", ".join(out)


def summary_table(frameworks: pd.DataFrame) -> pd.DataFrame:
    """One row per framework, fastest first by s/epoch (median-based; failed and skipped
    ones last): summary.aggregate_repeats of its runs (the median of most figures, with
    min and max for SPREAD's), its load range and flags. A row per cell and world size
    where the runs have several, and per machine kind where merged records come from
    several (each machine's rows ranked apart, never pooled)."""
    rows = pd.DataFrame([summarise(r) for r in _records(frameworks)])
    if rows.empty:
        return rows
    keys = [k for k in ("framework", "cell", "world_size", "machine") if k in rows]
    out = aggregate_repeats(rows, keys).drop(columns=["repeat"])
    out["load"] = [None if _missing(low) or _missing(high) else f"{low:.1f}–{high:.1f}"
                   for low, high in zip(out["load_min"], out["load_max"])]
    out["flags"] = [flags(r) for r in out.to_dict("records")]
    if "s_per_epoch" in out:
        out = out.sort_values("s_per_epoch", kind="stable", na_position="last")
    if shows_machines(out):  # each machine's rows together, in the order the runs were
        kinds = list(dict.fromkeys(rows["machine"].fillna("")))
        out = out.sort_values("machine", kind="stable", key=lambda m: m.fillna("").map(
            kinds.index))
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Tables and sentences
# ---------------------------------------------------------------------------------------


def _trained(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of frameworks that trained (ok, or failed only at generation)."""
    return table[table["duration_s"].notna()] if "duration_s" in table else table.iloc[0:0]


def _engines(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of inference engines that generated."""
    if "engine" not in table or "gen_chars_per_s" not in table:
        return table.iloc[0:0]
    return table[table["engine"].eq(True) & table["gen_chars_per_s"].notna()]


def _fp32(table: pd.DataFrame) -> pd.DataFrame:
    """The rows in fp32 (records from before the precisions have none: fp32)."""
    return table[table["precision"].fillna(FP32) == FP32] if "precision" in table else table


def shown_rows(table: pd.DataFrame) -> list[dict]:
    """The rows of the main and headline tables: those that trained (fastest first), then
    the inference engines that generated; NOT_APPLICABLE in the figures that do not apply
    to a row (an engine's training, a bf16 row's generation)."""
    rows = _trained(table).to_dict("records") + _engines(table).to_dict("records")
    for r in rows:
        if r.get("engine") == True:  # noqa: E712 (numpy's bool, or NaN in older rows)
            r.update(dict.fromkeys(TRAINING_COLUMNS, NOT_APPLICABLE))
        elif r.get("precision", FP32) != FP32:
            r.update(dict.fromkeys(GENERATION_COLUMNS, NOT_APPLICABLE))
    return rows


def results_table(table: pd.DataFrame) -> str:
    """The main table, fastest first by s/epoch, then the inference engines; without the
    generation columns where nothing generated."""
    columns = with_cell(TABLE, table)
    if not generates(table):
        columns = [c for c in columns if c[0] not in GENERATION_COLUMNS]
    return markdown_table(shown_rows(table), columns)


def headline_table(table: pd.DataFrame) -> str:
    """The README's few columns of a quick reference's table, medians only."""
    return markdown_table([{c: r.get(c) for c, _, _ in HEADLINE_COLUMNS}
                           for r in shown_rows(table)], HEADLINE_COLUMNS)


def timing_columns(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The step-time table's columns; with bf16 rows, their bf16 peak after the float32
    ones."""
    if "peak_bf16_gflops" not in table or not table["peak_bf16_gflops"].notna().any():
        return TIMING_TABLE
    at = [c for c, _, _ in TIMING_TABLE].index("peak_diff")
    return [*TIMING_TABLE[:at], ("peak_bf16_gflops", "bf16 peak GFLOP/s", "{:,.1f}"),
            *TIMING_TABLE[at:]]


def generation_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the generation table: the fp32 rows that trained (a bf16 row generates
    nothing) and the engines."""
    return pd.concat([_fp32(_trained(table)), _engines(table)])


def session_table(frameworks: pd.DataFrame) -> str | None:
    """The session options each engine row measured (benchmarks.onnx_row): per number of
    streams and option, the median over repeats of each run's median chars/s, and in how
    many runs it was the fastest (kept); None without an engine row."""
    measured = []
    for r in _records(frameworks):
        session = r.get("session") if isinstance(r.get("session"), dict) else {}
        for m in session.get("measured", []):
            chosen = session.get("chosen", {}).get(str(m["num_samples"])) or {}
            kept = ((chosen.get("intra_op_threads"), chosen.get("optimization"))
                    == (m["intra_op_threads"], m["optimization"]))
            measured.append({"framework": r["framework"], **m, "kept": kept})
    if not measured:
        return None
    keys = ["framework", "num_samples", "intra_op_threads", "optimization"]
    out = (pd.DataFrame(measured).groupby(keys, sort=False)
           .agg(chars_per_s=("chars_per_s", "median"), kept=("kept", "sum"),
                runs=("kept", "size")).reset_index())
    out["kept"] = ["" if not k else "kept" if k == n else f"kept in {k} of {n} runs"
                   for k, n in zip(out["kept"], out["runs"])]
    return markdown_table(out, SESSION_TABLE)


def session_choices(table: pd.DataFrame) -> list[dict]:
    """Per engine row of the table, what it chose: its name and its choice text."""
    return [{"name": r["framework"], "choice": r.get("session_choice")}
            for r in _engines(table).to_dict("records")]


def cells_table(table: pd.DataFrame) -> str:
    """Per framework, the median step of each cell and its ratio to the LSTM's, and each
    cell's validation loss: what a cell costs here, and that the frameworks agree on it.
    Merged records of several machine kinds: a row per framework and machine, so that a
    ratio divides two times of one machine."""
    trained = _trained(table)
    if trained.empty:
        return ""
    cells = [c for c in CELLS if c in set(trained["cell"])]
    index = ["framework", "machine"] if shows_machines(table) else ["framework"]
    wide = trained.pivot_table(index=index, columns="cell", values=["step_ms", "val_loss"],
                               aggfunc="first")
    step, loss = wide["step_ms"].reindex(columns=cells), wide["val_loss"].reindex(columns=cells)
    ratios = [c for c in cells if c != "lstm" and "lstm" in cells]
    out = pd.concat([step.add_suffix(" step ms"),
                     step[ratios].div(step["lstm"] if ratios else 1, axis=0).add_suffix(" / lstm"),
                     loss.add_suffix(" val loss")], axis=1)
    out = out.sort_values(f"{cells[0]} step ms", kind="stable").reset_index()
    if "machine" in index:  # each machine's rows together, fastest first within it
        kinds = list(dict.fromkeys(trained["machine"]))
        out = out.sort_values("machine", kind="stable", key=lambda m: m.map(kinds.index))
    fmt = {" step ms": "{:,.1f}", " / lstm": "{:.2f}x", " val loss": "{:.4f}"}
    return markdown_table(out, [(c, c, "{}") for c in index] + [
        (c, c, next(f for end, f in fmt.items() if c.endswith(end)))
        for c in out.columns if c not in index])


def scaling_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """(rows, columns) of the scaling table: per framework, the whole batch's chars/s at
    each world size W of its successful runs, and at each W above the smallest W0 (1)
    the speedup, chars/s at W over chars/s at W0, and the efficiency, speedup / (W / W0).
    A row per framework and machine where merged records come from several kinds, so
    that a speedup divides two rates of one machine."""
    trained = _trained(table)
    ok = trained[(trained["status"] == "ok") & trained["world_size"].notna()]
    index = ["framework", "machine"] if shows_machines(table) else ["framework"]
    rate = ok.assign(world=ok["world_size"].astype(int)).pivot_table(
        index=index, columns="world", values="chars_per_s", aggfunc="first", sort=False)
    worlds = sorted(rate.columns)
    rows = rate.add_prefix("chars_per_s@")
    for w in worlds[1:]:
        speedup = rate[w] / rate[worlds[0]].where(rate[worlds[0]] > 0)
        rows[f"speedup@{w}"], rows[f"efficiency@{w}"] = speedup, speedup / (w / worlds[0])
    columns = [(c, c, "{}") for c in index]
    columns += [(f"chars_per_s@{w}", f"chars/s W={w}", "{:,.0f}") for w in worlds]
    for w in worlds[1:]:
        columns += [(f"speedup@{w}", f"speedup W={w}", "{:.2f}x"),
                    (f"efficiency@{w}", f"efficiency W={w}", "{:.0%}")]
    return rows.reset_index(), columns


def scaling_table(table: pd.DataFrame) -> str:
    """The scaling table (scaling_rows) in markdown."""
    rows, columns = scaling_rows(table)
    return markdown_table(rows, columns) if len(rows) else ""


def compare_original(table: pd.DataFrame) -> str:
    """The original suite's duration and loss beside this run's, with where they come from."""
    ours = table.drop_duplicates("framework").reindex(
        columns=["framework", "duration_s", "epochs", "train_loss"])
    return "\n\n".join([sentence("lines.md.j2", "original_source", source=ORIGINAL_SOURCE),
                        markdown_table(ORIGINAL.merge(ours, how="left", on="framework"),
                                       ORIGINAL_TABLE)])


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
    return ([sentence("lines.md.j2", "peak_note", tolerance=PEAK_TOLERANCE)] if "¹" in cells
            else []) + ([sentence("lines.md.j2", "stall_note", factor=stall_factor(table))]
                        if "²" in cells else []) + (
        [sentence("lines.md.j2", "emulated_note")] if "³" in cells else [])


def row_notes(table: pd.DataFrame) -> list[str]:
    """What the main table's bf16 and engine rows are, where it has them."""
    bf16 = [r for r in _trained(table).to_dict("records") if r.get("precision") == BF16_MIXED]
    units = sorted({r["bf16_units"] or "none (emulated)" for r in bf16
                    if isinstance(r.get("bf16_units"), str)})
    return ([sentence("lines.md.j2", "bf16_note", names=[r["framework"] for r in bf16],
                      units=units, generates=generates(table))] if bf16
            else []) + ([sentence("lines.md.j2", "engine_note", engines=session_choices(table))]
                        if len(_engines(table)) else [])


def loss_agreement(table: pd.DataFrame) -> str | None:
    """One line: how far apart the trained rows' last-epoch train and validation losses
    are (max - min), against LOSS_SPREAD_TARGET; None for fewer than two rows, or for rows
    of different cells (different models: the cells table compares them)."""
    rows = [r for r in _trained(table).to_dict("records") if not _missing(r.get("val_loss"))]
    if len(rows) < 2 or shows_cells(table):
        return None
    spans = []
    for column, name in (("train_loss", "train"), ("val_loss", "validation")):
        values = sorted((r[column], table_label(r, table)) for r in rows
                        if not _missing(r.get(column)))
        (low, low_name), (high, high_name) = values[0], values[-1]
        spans.append({"name": name, "low": low, "low_name": low_name, "high": high,
                      "high_name": high_name})
    within = max(x["high"] - x["low"] for x in spans) <= LOSS_SPREAD_TARGET
    return sentence("lines.md.j2", "agreement", rows=len(rows), spans=spans, within=within,
                    target=LOSS_SPREAD_TARGET)


def _precision_pairs(table: pd.DataFrame, column: str) -> list[dict]:
    """Each trained bf16 row with `column` beside its fp32 row's (same framework, cell and
    sweep point, after the same training): name, the fp32 row's framework, "bf16" and
    "fp32" values."""
    rows = [r for r in _trained(table).to_dict("records") if not _missing(r.get(column))]
    fp32 = {(r["framework"], r.get("cell"), r.get("point")): r[column] for r in rows
            if r.get("precision", FP32) in (FP32, None)}
    pairs = []
    for r in rows:
        partner = (fp32_name(r["framework"]), r.get("cell"), r.get("point"))
        if r.get("precision") == BF16_MIXED and partner in fp32:
            at = f" at {r['point']}" if isinstance(r.get("point"), str) else ""
            pairs.append({"name": table_label(r, table) + at, "fp32_framework": partner[0],
                          "bf16": r[column], "fp32": fp32[partner]})
    return pairs


def precision_agreement(table: pd.DataFrame) -> str | None:
    """One line: each bf16 row's validation loss minus its fp32 row's, against
    BF16_LOSS_TARGET; None without such a pair."""
    pairs = _precision_pairs(table, "val_loss")
    if not pairs:
        return None
    epochs = _trained(table)["epochs"].dropna()
    within = all(abs(p["bf16"] - p["fp32"]) <= BF16_LOSS_TARGET for p in pairs)
    return sentence("lines.md.j2", "precision_agreement", pairs=pairs, within=within,
                    target=BF16_LOSS_TARGET, epochs=epochs.max() if len(epochs) else None)


def precision_speedup(table: pd.DataFrame) -> str | None:
    """One line: each bf16 row's speed-up (its fp32 row's median step over its own)
    against its target (BF16_SPEEDUP_TARGETS); None without such a pair."""
    pairs = _precision_pairs(table, "step_ms")
    for p in pairs:
        p["speedup"] = p["fp32"] / p["bf16"]
        p["target"] = BF16_SPEEDUP_TARGETS.get(p["fp32_framework"], BF16_SPEEDUP_TARGET)
    if not pairs:
        return None
    return sentence("lines.md.j2", "precision_speedup", pairs=pairs,
                    reached=sum(p["speedup"] >= p["target"] for p in pairs))


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
    return sentence("lines.md.j2", "run_time", seconds=sum(seconds), runs=len(seconds),
                    span=span)


def precision_lines(table: pd.DataFrame) -> list[str]:
    """The bf16 rows' loss and speed-up lines that apply (none without bf16 rows)."""
    return [line for line in (precision_agreement(table), precision_speedup(table)) if line]


def summary_lines(table: pd.DataFrame, frameworks: pd.DataFrame) -> list[str]:
    """The agreement and run-time lines that apply (report.md, the full block, stdout)."""
    return [line for line in (loss_agreement(table), *precision_lines(table),
                              run_time(frameworks)) if line]


def problems(table: pd.DataFrame) -> list[str]:
    """A line per row that failed or was skipped, with the stage and the error."""
    return [sentence("lines.md.j2", "problem", name=table_label(r, table), status=r["status"],
                     stage=r.get("stage"), error=r["error"])
            for r in table.to_dict("records") if r["status"] != "ok"]


# ---------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------


def _samples(frameworks: pd.DataFrame) -> list[tuple[str, str]]:
    """(framework, the start of its generated text) of each first repeat that generated;
    a fence in the text would end the code block."""
    return [(r["framework"] + (" (the untrained initial weights)" if r.get("engine") else ""),
             r["generation"]["text"][:SAMPLE_CHARS].replace("```", "'" * 3).rstrip("\n"))
            for r in _records(frameworks)
            if r.get("repeat", 0) == 0 and isinstance(r.get("generation"), dict)
            and r["generation"].get("text")]


def _repeated(table: pd.DataFrame) -> bool:
    return bool((table.get("repeats", pd.Series([1])) > 1).any())


def _batch_samples(table: pd.DataFrame) -> str:
    counts = table.get("batch_gen_samples", pd.Series(dtype=float)).dropna()
    return f"{counts.max():.0f}" if len(counts) else "N"


def render_report(runs: list[dict], table: pd.DataFrame, frameworks: pd.DataFrame,
                  compare: bool) -> str:
    """report.md (templates/report.md.j2); merged records of several machine kinds get
    a Machine subsection per kind."""
    run, first = (runs[-1], runs[0]) if runs else ({}, {})
    s = run.get("settings", {})
    machine_lines = [(kind, _machine_lines(kind_runs[-1] if kind_runs else {}, rows, records))
                     for kind, kind_runs, records, rows in by_machine(runs, frameworks, table)]
    worlds, trained = shows_worlds(table), _trained(table)
    return render(
        "report.md.j2", s=s, description=first.get("description", run.get("description", "?")),
        machine_header=machine_header(runs, frameworks),
        text_name=Path(s.get("text_path", "?")).name, results_table=results_table(table),
        notes=row_notes(table) + flag_notes(table), summary=summary_lines(table, frameworks),
        problems=problems(table), worlds=worlds, machines=shows_machines(table),
        generates=generates(table),
        batch_samples=_batch_samples(table), repeated=_repeated(table),
        cells_table=cells_table(table) if shows_cells(table) else None,
        scaling_table=scaling_table(table) if worlds else None,
        base_world=min((int(w) for w in table["world_size"].dropna()), default=1)
        if worlds else 1,
        timing_table=markdown_table(trained, with_cell(timing_columns(table), table)),
        stall_factor=stall_factor(table), peak_tolerance=PEAK_TOLERANCE,
        generation_table=markdown_table(generation_rows(table),
                                        with_cell(GENERATION_TABLE, table)),
        machine_lines=machine_lines, versions_table=_versions_table(table),
        compare=compare_original(table) if compare else None, samples=_samples(frameworks),
        sample_chars=SAMPLE_CHARS, session_table=session_table(frameworks))


# ---------------------------------------------------------------------------------------
# The results page (docs/RESULTS.md): a section per reference directory
# ---------------------------------------------------------------------------------------

# The profiles' sections in the order the page shows them; others (a custom run) after.
PAGE_ORDER = ("quick", "cells", "sweep", "sweep-bf16", "bf16-long", "scaling", "full")
PAGE_TITLES = {"quick": "One epoch of every framework (quick profile)",
               "cells": "The cells: LSTM, GRU and vanilla RNN (cells profile)",
               "sweep": "Model and batch size (sweep profile)",
               "sweep-bf16": "bf16-mixed against fp32 up to rnn size 1024 (sweep-bf16 profile)",
               "bf16-long": "bf16-mixed against fp32 over four epochs (bf16-long profile)",
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


def page_section(results_dir: Path, page: Path) -> dict:
    """What the page's section of one reference directory shows, whatever its profile
    (templates/results_page.md.j2 words it)."""
    runs, frameworks = load_records(results_dir)
    x = {"name": results_dir.name, "link": page_link(results_dir, page), "run": runs[-1],
         "title": PAGE_TITLES.get(results_dir.name, results_dir.name + " profile")}
    if sweep_report.is_sweep(frameworks):
        table, grid = sweep_report.sweep_table(frameworks), sweep_report.grid_of(runs)
        shown = sweep_report.shown_plots(table, grid)
        second = (("throughput against batch size", shown["batch"]) if "batch" in shown
                  else ("MFU against rnn size", shown["mfu"]))
        return {**x, "profile": "sweep",
                "plots": (("step time against rnn size", shown["step"]), second),
                "table": sweep_report.framework_table(table, grid),
                "precisions": sweep_report.precision_table(table, grid)}
    table = summary_table(frameworks)
    if shows_cells(table):
        return {**x, "profile": "cells", "table": cells_table(table)}
    if shows_worlds(table):
        return {**x, "profile": "scaling", "table": scaling_table(table)}
    x.update(table=results_table(table), notes=row_notes(table) + flag_notes(table),
             repeated=_repeated(table), precision=precision_lines(table))
    if runs[-1].get("settings", {}).get("profile") == "full":
        return {**x, "profile": "full", "description": runs[0].get("description", "?"),
                "summary": summary_lines(table, frameworks), "compare": compare_original(table)}
    return {**x, "profile": "results"}


def results_page(reference_root: Path, page: Path) -> str:
    """docs/RESULTS.md: every committed reference, a part per machine kind (newest first)
    and a section per profile."""
    kinds = [{"name": kind, "sections": [page_section(d, page) for d in dirs]}
             for kind, dirs in reference_dirs(reference_root).items()]
    return render("results_page.md.j2", kinds=kinds, root=page_link(reference_root, page)(""))


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
    rows = [(table_label(r, table), *(None if _missing(r.get(c)) else r[c]
                                       for c in ("chars_per_s", "gen_chars_per_s")))
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
