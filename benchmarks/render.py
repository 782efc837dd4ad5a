"""What every report renders the same way: markdown tables with the repeats' spread, the
machine header and its kinds, the versions table, and links from the results page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmarks.records import machine_slug
from benchmarks.summary import _peak_measurements, _records
from charrnn.common.logs import format_duration

# records.ISA_FLAGS as Intel's and AMD's manuals name them.
ISA_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16",
             "amx_tile": "AMX", "amx_bf16": "AMX-BF16"}


# The time columns that show their spread over repeats: "median (min–max)".
SPREAD = ("s_per_epoch", "wall_s_per_epoch", "chars_per_s", "step_ms", "first_step_s",
          "gen_chars_per_s", "batch_gen_chars_per_s")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value, fmt: str) -> str:
    if _missing(value):
        return "–"
    if fmt == "duration":
        return format_duration(value)
    if fmt == "pct":
        return f"{100 * value:.2f}%"
    return fmt.format(value)


def _spread_cell(row: dict, column: str, fmt: str) -> str:
    """The cell of `column`: its value, and for SPREAD's columns over several runs that
    differ, their min–max: "12.3 (12.1–12.9)"."""
    text = _cell(row.get(column), fmt)
    low, high = row.get(f"{column}_min"), row.get(f"{column}_max")
    if column in SPREAD and not _missing(low) and not _missing(high) and low != high:
        text += f" ({_cell(low, fmt)}–{_cell(high, fmt)})"
    return text


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if f == "{}" else "---:" for _, _, f in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_spread_cell(row, c, f) for c, _, f in columns) + " |")
    return "\n".join(lines)


def _first_load(value) -> float | None:
    return value[0] if isinstance(value, list) and value else None


def machine_header(runs: list[dict], frameworks: pd.DataFrame) -> str:
    """One paragraph: the CPU, cores and threads, the 1-minute load average before, around
    and after the frameworks' runs, and the float32 matmul peaks. Merged records of
    several machine kinds: a paragraph per kind, of its own runs."""
    kinds = _machine_kinds(runs)
    if len(kinds) > 1 and "machine" in frameworks:
        return "\n\n".join(
            f"**{kind}**: " + machine_header(
                [r for r in runs if machine_slug(r.get("machine") or {}) == kind],
                frameworks[frameworks["machine"] == kind]) for kind in kinds)
    run = runs[-1] if runs else {}
    m, threads = run.get("machine", {}), run.get("settings", {}).get("threads")
    ordered = sorted(_records(frameworks), key=lambda r: str(r.get("finished") or ""))
    around = [x for r in ordered for x in map(_first_load, (r.get("loadavg_start"),
                                                          r.get("loadavg_end"))) if x is not None]
    before = _first_load(runs[0].get("loadavg")) if runs else None
    after = _first_load(ordered[-1].get("loadavg_end")) if ordered else None
    load = [f"{before:.1f} before the run" if before is not None else None,
            f"{min(around):.1f}–{max(around):.1f} (min–max) at the frameworks' starts and ends"
            if around else None,
            f"{after:.1f} after the last" if after is not None else None]
    worlds = run.get("settings", {}).get("world_sizes") or []
    used = threads * max(worlds) if threads is not None and worlds else threads
    per = (f"{threads} thread{'s' if threads != 1 else ''} per process, up to {max(worlds)} "
           "processes" if worlds else f"{threads} threads per framework")
    isa = m.get("isa")
    extensions = ("" if isa is None else
                  f" ({', '.join(ISA_NAMES.get(f, f) for f in isa) or 'no AVX2, AVX-512 or AMX'})")
    text = (f"Machine: {m.get('cpu')}{extensions}, {m.get('cores')} cores "
            f"({m.get('usable_cores')} usable), {per}. 1-minute load average: "
            + ("; ".join(filter(None, load)) or "not recorded"))
    loads = [x for x in (before, after, *around) if x is not None]
    if used is not None and loads and max(loads) > used + 0.5:
        text += (f" (above the {used} threads used: other work shared the CPU, so these "
                 "times are pessimistic)")
    measured = [p["peak_flops"] / 1e9 for p in _peak_measurements(frameworks)]
    old = run.get("peak", {}).get("peak_flops") if isinstance(run.get("peak"), dict) else None
    if measured:
        text += (f". float32 matmul peak: {min(measured):,.1f}–{max(measured):,.1f} GFLOP/s "
                 f"over {len(measured)} measurements, right before and right after each run "
                 "(each run's MFU is against the mean of its two).")
    elif old:
        text += f". float32 matmul peak: {old / 1e9:,.1f} GFLOP/s, measured once at the start."
    else:
        text += ". float32 matmul peak: not measured."
    return text


def _machine_kinds(runs: list[dict]) -> list[str]:
    """The machine kinds (records.machine_slug) of these run records, in order."""
    return list(dict.fromkeys(machine_slug(r.get("machine") or {}) for r in runs))


def _machine_lines(run: dict, table: pd.DataFrame, frameworks: pd.DataFrame) -> list[str]:
    m, git, s = run.get("machine", {}), run.get("git", {}), run.get("settings", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)"
                                                      if git.get("dirty") else "")
    measured = _peak_measurements(frameworks)
    peak = measured[0] if measured else run.get("peak") or {}
    how = (f"NumPy {peak.get('numpy')}, {peak.get('blas')}, {peak.get('size')}² matrices, best "
           f"of {peak.get('repeats')}") if peak.get("peak_flops") else "not measured"
    lines = [
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores ({m.get('usable_cores')} usable), "
        f"{m.get('memory_gb')} GB memory",
        f"- threads per {'process' if s.get('world_sizes') else 'framework'}: "
        f"{s.get('threads')} (`--threads` and the OMP/MKL/OpenBLAS/"
        "TF/MXNet thread variables); device: " + ", ".join(
            sorted({str(d) for d in table.get("device", pd.Series(dtype=object)).dropna()}) or
            [str(s.get("device"))]),
        f"- OS: {m.get('os')}; runner Python {m.get('runner_python')}",
        f"- float32 matmul peak: {how}"
        + (", right before and right after each run" if measured else
           ", once at the start of the run" if peak.get("peak_flops") else ""),
        f"- git commit {commit}; started {run.get('started')}",
    ]
    return lines


def _versions_table(table: pd.DataFrame) -> str:
    rows = [r for r in table.to_dict("records") if isinstance(r.get("versions"), str)]
    return markdown_table(rows, [("framework", "framework", "{}"), ("versions", "libraries", "{}"),
                                 ("python", "Python", "{}"), ("device", "device", "{}"),
                                 ("repeats", "runs", "{}")])


def page_link(results_dir: Path, page: Path) -> Callable[[str], str]:
    """The link from the markdown file `page` to a file of `results_dir`, by name."""
    rel = Path(os.path.relpath(results_dir.resolve(), page.resolve().parent)).as_posix()
    return (lambda name: name) if rel == "." else (lambda name: f"{rel}/{name}")
