"""The report of a sweep: how each framework's cost grows with the model and the batch.

    python -m benchmarks.report benchmarks/results/sweep
    python -m benchmarks.report benchmarks/results/sweep --reference   # make reference-sweep

benchmarks.report hands a results directory here when its framework records name a
sweep point (benchmarks.sweep). Written beside the records:

    sweep.csv                      one row per framework and point (medians over repeats)
    report.md                      the two tables below, failures, the plots, the machine
    step_time_vs_rnn_size.png      ms per training step against --rnn-size, log-log, with
                                   the FLOP-bound step at the measured float32 GEMM peak
    mfu_vs_rnn_size.png            MFU against --rnn-size
    generation_vs_rnn_size.png     single-stream generation chars/s against --rnn-size
    throughput_vs_batch_size.png   training chars/s against --batch-size, log-log
    memory_vs_batch_size.png       the training process's peak memory against --batch-size

The tables: the fastest framework at each point, and per framework its step times,
throughput and scaling exponent, the least-squares slope of log(step time) against
log(training FLOPs per step) over the rnn sizes. An exponent of 1 is a step whose
time grows with its arithmetic (compute-bound); below 1, a fixed cost per step
(dispatch, the seq_len sequential time steps) that larger models amortise; above 1,
a step that gets less efficient as it grows (caches, memory). With --reference the
results page (docs/RESULTS.md) shows the framework table and the two main plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.mfu import train_flops_per_step
from benchmarks.plot import Line, plot_lines
from benchmarks.render import (
    _machine_lines,
    _missing,
    _versions_table,
    machine_header,
    markdown_table,
    render,
    sentence,
)
from benchmarks.rows import fp32_name
from benchmarks.summary import (
    _peak_measurements,
    _records,
    aggregate_repeats,
    generates,
    summarise,
)
from benchmarks.sweep import Grid, Point, point_of
from charrnn.common.config import BF16_MIXED
from charrnn.common.fileio import atomic_write_text

# A step after the first that takes more than this many times the median of the others is
# still warming up (compiling a second trace, filling caches): the report says so.
WARMUP_FACTOR = 2.0
STEP_PLOT, BATCH_PLOT = "step_time_vs_rnn_size.png", "throughput_vs_batch_size.png"
PLOTS = {"step": STEP_PLOT, "mfu": "mfu_vs_rnn_size.png",
         "generation": "generation_vs_rnn_size.png", "batch": BATCH_PLOT,
         "memory": "memory_vs_batch_size.png"}


def shown_plots(table: pd.DataFrame, grid: Grid) -> dict[str, str]:
    """The PLOTS a sweep has something to draw in: generation only where it generated, the
    batch-size axis only where it has more than one size (sweep-bf16's has one)."""
    return {name: file for name, file in PLOTS.items()
            if (name != "generation" or generates(table))
            and (name not in ("batch", "memory") or len(grid.batch_sizes) > 1)}


# ---------------------------------------------------------------------------------------
# Records -> one row per framework and point
# ---------------------------------------------------------------------------------------


def is_sweep(frameworks: pd.DataFrame) -> bool:
    """Whether these framework records are a sweep's (they name their points)."""
    return "point" in frameworks and bool(frameworks["point"].map(
        lambda p: isinstance(p, dict)).any())


def grid_of(runs: list[dict]) -> Grid:
    """The sweep's grid, as its run record names it."""
    return Grid.from_dict((runs[-1].get("settings") or {}).get("grid") if runs else None)


def warmup_steps(steps) -> int | None:
    """How many steps it took before the step time settled: the first (compilation) and
    any that follow it at over WARMUP_FACTOR x the median of the rest. From the per-step
    log ([[step, elapsed training s, loss], ...]); None unless every step was logged."""
    if not isinstance(steps, list) or len(steps) < 4:
        return None
    if [s[0] for s in steps] != list(range(1, len(steps) + 1)):
        return None
    times = np.diff([0.0, *(s[1] for s in steps)])
    n = 1
    while n < len(times) - 1 and times[n] > WARMUP_FACTOR * np.median(times[n + 1:]):
        n += 1
    return n


def point_row(record: dict) -> dict:
    """The measurements of one framework at one point (summarise, and the point)."""
    row = summarise(record)
    point = point_of(record)
    header = record.get("header") or {}
    flops, chars = header.get("flops_per_char"), header.get("chars_per_batch")
    row.update(point=point.key, rnn_size=point.rnn_size, batch_size=point.batch_size,
               train_flops_per_step=train_flops_per_step(flops, chars) if flops and chars
               else None, warmup_steps=warmup_steps(record.get("steps")))
    return row


def sweep_table(frameworks: pd.DataFrame) -> pd.DataFrame:
    """One row per framework and point, in the order they ran: the median over the point's
    successful repeats (summary.aggregate_repeats; the last run, with its error, when none
    succeeded)."""
    rows = pd.DataFrame([point_row(r) for r in _records(frameworks) if point_of(r)])
    if rows.empty:
        return rows
    keys = ["framework", "point", "rnn_size", "batch_size"]  # the point and its sizes
    return aggregate_repeats(rows, keys).drop(columns=["repeat"])


# ---------------------------------------------------------------------------------------
# The scaling exponent and the two tables
# ---------------------------------------------------------------------------------------


def scaling_exponent(flops: list[float], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(flops); None with fewer than two
    distinct FLOP counts measured."""
    pairs = [(f, s) for f, s in zip(flops, seconds) if not _missing(f) and not _missing(s)
             and f > 0 and s > 0]
    if len({f for f, _ in pairs}) < 2:
        return None
    slope, _ = np.polyfit(np.log([f for f, _ in pairs]), np.log([s for _, s in pairs]), 1)
    return float(slope)


def _axis(table: pd.DataFrame, grid: Grid, axis: str) -> pd.DataFrame:
    """The rows on the rnn-size axis ("rnn_size") or the batch-size axis ("batch_size"),
    by size."""
    on = grid.on_rnn_axis if axis == "rnn_size" else grid.on_batch_axis
    keep = [on(Point(int(h), int(b))) for h, b in zip(table["rnn_size"], table["batch_size"])]
    return table[keep].sort_values(axis, kind="stable")


def exponents(table: pd.DataFrame, grid: Grid) -> dict[str, float | None]:
    """Each framework's scaling exponent over the rnn sizes (its successful points)."""
    rnn = _axis(table, grid, "rnn_size")
    return {name: scaling_exponent(list(runs["train_flops_per_step"]),
                                   list(runs["step_ms"] / 1000))
            for name, runs in rnn[rnn["status"] == "ok"].groupby("framework", sort=False)}


def fastest_rows(table: pd.DataFrame, grid: Grid) -> list[dict]:
    """One row per point: the fastest training step there, the runner-up and how much
    slower it is, and (on the rnn-size axis) the fastest single-stream generation."""
    out = []
    for point in grid.points():
        at = table[(table["rnn_size"] == point.rnn_size)
                   & (table["batch_size"] == point.batch_size) & table["step_ms"].notna()]
        if at.empty:
            continue
        ranked = at.sort_values("step_ms", kind="stable").to_dict("records")
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        row = {"rnn_size": point.rnn_size, "batch_size": point.batch_size,
               "fastest": best["framework"], "step_ms": best["step_ms"],
               "chars_per_s": best["chars_per_s"], "mfu": best["mfu"],
               "runner_up": f"{second['framework']} ({second['step_ms'] / best['step_ms']:.2f}x)"
               if second else None}
        gen = at[at["gen_chars_per_s"].notna()] if "gen_chars_per_s" in at else at.iloc[0:0]
        if len(gen):
            top = gen.loc[gen["gen_chars_per_s"].idxmax()]
            row["fastest_gen"] = f"{top['framework']} ({top['gen_chars_per_s']:,.0f})"
        out.append(row)
    return out


# The table of the fastest framework at each point: (column, header, format).
FASTEST_TABLE = [("rnn_size", "rnn size", "{:.0f}"), ("batch_size", "batch size", "{:.0f}"),
                 ("fastest", "fastest", "{}"), ("step_ms", "step ms", "{:,.1f}"),
                 ("chars_per_s", "chars/s", "{:,.0f}"), ("mfu", "MFU", "pct"),
                 ("runner_up", "runner-up (step time ratio)", "{}"),
                 ("fastest_gen", "fastest generation (chars/s)", "{}")]


def framework_table(table: pd.DataFrame, grid: Grid) -> str:
    """The per-framework table: exponent, step ms at each rnn size, training chars/s at
    each batch size, the longest first step (compilation) of its points, and the steps
    its warm-up took where more than one (the most over them)."""
    ok = table[table["status"] == "ok"]
    names = pd.Index(table["framework"].unique(), name="framework")

    def at(axis: str, column: str) -> pd.DataFrame:  # (framework, size on the axis)
        return _axis(ok, grid, axis).pivot_table(
            index="framework", columns=axis, values=column, aggfunc="first").reindex(
            index=names, columns=grid.axis_sizes(axis)).add_prefix(f"{column}@")
    most = ok.groupby("framework").max(numeric_only=True).reindex(names)
    rows = pd.concat([pd.Series(exponents(table, grid), name="exponent", dtype=float),
                      at("rnn_size", "step_ms"), at("batch_size", "chars_per_s")],
                     axis=1).reindex(names)
    rows["first_step_s"] = most.get("first_step_s")
    rows["warmup"] = [f"{w:.0f}" if w > 1 else None for w in most.get(
        "warmup_steps", pd.Series(float("nan"), index=names)).fillna(0)]
    columns = [("framework", "framework", "{}"), ("exponent", "exponent", "{:.2f}")]
    columns += [(f"step_ms@{h}", f"ms/step H={h}", "{:,.1f}")
                for h in grid.axis_sizes("rnn_size")]
    columns += [(f"chars_per_s@{b}", f"chars/s B={b}", "{:,.0f}")
                for b in grid.axis_sizes("batch_size")]
    columns.append(("first_step_s", "first step s (max)", "{:,.2f}"))
    if rows["warmup"].notna().any():
        columns.append(("warmup", "warm-up steps", "{}"))
    return markdown_table(rows.reset_index(), columns)


def precision_table(table: pd.DataFrame, grid: Grid) -> str | None:
    """Per framework with a bf16 row (benchmarks.rows) and rnn size: the fp32 and the bf16
    row's step, the bf16 speedup (fp32 step / bf16 step) and the bf16 row's MFU (against
    the bf16 peak); None without bf16 rows."""
    if "precision" not in table or not (table["precision"] == BF16_MIXED).any():
        return None
    rnn = _axis(table[table["status"] == "ok"], grid, "rnn_size")
    bf16 = rnn[rnn["precision"] == BF16_MIXED]
    fp32 = rnn[rnn["precision"] != BF16_MIXED].set_index(["framework", "rnn_size"])
    rows = []
    for r in bf16.to_dict("records"):
        twin = (fp32_name(r["framework"]), r["rnn_size"])
        fp32_ms = fp32["step_ms"].get(twin)
        rows.append({"framework": twin[0], "rnn_size": r["rnn_size"], "fp32_ms": fp32_ms,
                     "bf16_ms": r["step_ms"], "speedup": fp32_ms / r["step_ms"]
                     if fp32_ms and r["step_ms"] else None,
                     "fp32_mfu": fp32["mfu"].get(twin), "bf16_mfu": r["mfu"]})
    order = list(dict.fromkeys(r["framework"] for r in rows))
    rows.sort(key=lambda r: (order.index(r["framework"]), r["rnn_size"]))
    return markdown_table(rows, PRECISION_TABLE) if rows else None


PRECISION_TABLE = [("framework", "framework", "{}"), ("rnn_size", "rnn size", "{:.0f}"),
                   ("fp32_ms", "fp32 step ms", "{:,.1f}"), ("bf16_ms", "bf16 step ms", "{:,.1f}"),
                   ("speedup", "bf16 speedup", "{:.2f}x"),
                   ("fp32_mfu", "fp32 MFU (of the fp32 peak)", "pct"),
                   ("bf16_mfu", "bf16 MFU (of the bf16 peak)", "pct")]


def problem_lines(table: pd.DataFrame, frameworks: pd.DataFrame) -> list[str]:
    """A line per failed or timed-out point, and per skipped framework, with the reason."""
    return [sentence("lines.md.j2", "problem", name=r["framework"], at=r["point"],
                     status=r["status"], stage=r.get("stage"), error=r["error"])
            for r in table.to_dict("records") if r["status"] != "ok"] + [
        sentence("lines.md.j2", "problem", name=r["framework"], status="skipped", stage=None,
                 error=r.get("error"))
        for r in _records(frameworks) if r.get("status") == "skipped"]


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------


def _lines(rows: pd.DataFrame, x: str, y: str) -> list[Line]:
    ok = rows[(rows["status"] == "ok") & rows[y].notna()] if y in rows else rows.iloc[0:0]
    return [Line(name, list(r[x]), list(r[y])) for name, r in ok.groupby("framework", sort=False)]


def peak_flops(frameworks: pd.DataFrame) -> float | None:
    """The median float32 GEMM peak of every measurement of the sweep."""
    measured = [p["peak_flops"] for p in _peak_measurements(frameworks)]
    return float(np.median(measured)) if measured else None


def flop_bound(rnn: pd.DataFrame, peak: float | None) -> Line | None:
    """The step time at `peak` FLOP/s: training FLOPs per step / peak, at each rnn size."""
    work = rnn.dropna(subset=["train_flops_per_step"]).drop_duplicates("rnn_size")
    if peak is None or work.empty:
        return None
    return Line(f"FLOP-bound at the GEMM peak ({peak / 1e9:,.0f} GFLOP/s)", list(work["rnn_size"]),
                list(1000 * work["train_flops_per_step"] / peak))


def write_plots(table: pd.DataFrame, grid: Grid, frameworks: pd.DataFrame,
                results_dir: Path) -> None:
    """The shown_plots, each drawn into results_dir."""
    shown = shown_plots(table, grid)
    rnn, batch = _axis(table, grid, "rnn_size"), _axis(table, grid, "batch_size")
    at_batch, at_rnn = f"--batch-size {grid.batch_size}", f"--rnn-size {grid.rnn_size}"
    plot_lines(_lines(rnn, "rnn_size", "step_ms"), results_dir / STEP_PLOT,
               xlabel=f"--rnn-size (at {at_batch})", ylabel="ms per training step (median)",
               title="Training step time against model size", log_y=True,
               reference=flop_bound(rnn, peak_flops(frameworks)))
    plot_lines(_lines(rnn, "rnn_size", "mfu"), results_dir / PLOTS["mfu"],
               xlabel=f"--rnn-size (at {at_batch})",
               ylabel="MFU (of the float32 GEMM peak; bf16 rows: the bf16 one)",
               title="Model FLOP utilisation against model size", percent=True)
    if "generation" in shown:
        plot_lines(_lines(rnn, "rnn_size", "gen_chars_per_s"),
                   results_dir / PLOTS["generation"], xlabel="--rnn-size",
                   ylabel="generated chars/s (one stream)", log_y=True,
                   title="Generation speed against model size")
    if "batch" in shown:
        plot_lines(_lines(batch, "batch_size", "chars_per_s"), results_dir / BATCH_PLOT,
                   xlabel=f"--batch-size (at {at_rnn})",
                   ylabel="training chars/s (median step)",
                   title="Training throughput against batch size", log_y=True)
        plot_lines(_lines(batch, "batch_size", "peak_mb"), results_dir / PLOTS["memory"],
                   xlabel=f"--batch-size (at {at_rnn})",
                   ylabel="peak resident memory of training (MiB)",
                   title="Training memory against batch size")


# ---------------------------------------------------------------------------------------
# report.md and main
# ---------------------------------------------------------------------------------------


def tables_text(table: pd.DataFrame, grid: Grid) -> str:
    """The two tables, in markdown."""
    return render("sweep_tables.md.j2", frameworks=framework_table(table, grid),
                  fastest=markdown_table(fastest_rows(table, grid), FASTEST_TABLE),
                  precisions=precision_table(table, grid)).rstrip("\n")


def render_report(runs: list[dict], table: pd.DataFrame, frameworks: pd.DataFrame,
                  grid: Grid) -> str:
    """report.md (templates/sweep_report.md.j2); the machine and the libraries from a row
    per framework, one of its successful points."""
    run = runs[-1] if runs else {}
    order = list(dict.fromkeys(table["framework"]))
    per_framework = (table.assign(failed=table["status"] != "ok")
                     .sort_values("failed", kind="stable").drop_duplicates("framework")
                     .set_index("framework").loc[order].reset_index())
    return render("sweep_report.md.j2", s=run.get("settings", {}), grid=grid,
                  plots=shown_plots(table, grid),
                  description=(runs[0] if runs else {}).get("description", "?"),
                  machine_header=machine_header(runs, frameworks),
                  tables=tables_text(table, grid), problems=problem_lines(table, frameworks),
                  warmup_factor=WARMUP_FACTOR, versions_table=_versions_table(per_framework),
                  machine_lines=_machine_lines(run, per_framework, frameworks))


def build(results_dir: Path, runs: list[dict], frameworks: pd.DataFrame) -> tuple[pd.DataFrame,
                                                                                  str]:
    """Write sweep.csv, report.md and the plots into `results_dir`; (table, report.md)."""
    table = sweep_table(frameworks)
    if table.empty:
        raise SystemExit(f"error: {results_dir}: no sweep points recorded yet")
    grid = grid_of(runs)
    atomic_write_text(results_dir / "sweep.csv", table.to_csv(index=False))
    write_plots(table, grid, frameworks, results_dir)
    text = render_report(runs, table, frameworks, grid)
    atomic_write_text(results_dir / "report.md", text)
    return table, text


def main(results_dir: Path, runs: list[dict], frameworks: pd.DataFrame) -> None:
    """benchmarks.report's main for a sweep: build and print the tables."""
    table, _ = build(results_dir, runs, frameworks)
    print(tables_text(table, grid_of(runs)))
    for line in problem_lines(table, frameworks):
        print(line)
    print(f"\nreport: {results_dir / 'report.md'}")
