"""What every report renders the same way: the words from the jinja2 templates in
benchmarks/templates/ (a change of wording is an edit there), the tables through pandas'
`to_markdown` with the repeats' spread, the machine header and its kinds, and links from
the results page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import jinja2
import pandas as pd

from benchmarks.records import bf16_units, machine_slug
from benchmarks.summary import SPREAD, _peak_measurements, _records
from charrnn.common.logs import format_duration

# records.ISA_FLAGS as Intel's and AMD's manuals name them.
ISA_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16",
             "amx_tile": "AMX", "amx_bf16": "AMX-BF16"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value, fmt: str) -> str:
    """A value as a table shows it: "–" where missing, a text as it is ("n/a" where a
    figure does not apply to a row); `fmt` a str.format pattern, "pct" (a share as
    12.34%) or "duration" (h:mm:ss.s)."""
    if _missing(value):
        return "–"
    if isinstance(value, str) and fmt != "{}":
        return value
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


def markdown_table(rows: pd.DataFrame | list[dict], columns: list[tuple[str, str, str]]) -> str:
    """`rows` in markdown through DataFrame.to_markdown: a column per (column, header, format)
    of `columns`, each cell formatted first (_spread_cell), text ("{}") left-aligned and
    figures right-aligned."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    cells = pd.DataFrame([[_spread_cell(r, c, f) for c, _, f in columns] for r in records],
                         columns=range(len(columns)))
    return cells.to_markdown(index=False, headers=[h for _, h, _ in columns],
                             disable_numparse=True,
                             colalign=["left" if f == "{}" else "right" for _, _, f in columns])


# ---------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------

TEMPLATES = Path(__file__).with_name("templates")
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=True,
                          undefined=jinja2.StrictUndefined, autoescape=False)
# {% filter para %}: a paragraph wrapped in the template for reading, one line in the output.
_ENV.filters["para"] = lambda text: " ".join(text.split()) + "\n"
_ENV.filters["fmt"] = _cell  # {{ value | fmt("{:,.1f}") }}, "–" where missing
_ENV.filters["plural"] = lambda n, word: f"{word}{'s' if n != 1 else ''}"


def render(template: str, **context) -> str:
    """benchmarks/templates/TEMPLATE rendered with `context`, ending in one newline."""
    return _ENV.get_template(template).render(**context).rstrip() + "\n"


def sentence(template: str, macro: str, **context) -> str:
    """One macro of a template of sentences (lines.md.j2), on one line."""
    return " ".join(str(getattr(_ENV.get_template(template).module, macro)(**context)).split())


# ---------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------


def _first_load(value) -> float | None:
    return value[0] if isinstance(value, list) and value else None


def _machine_figures(runs: list[dict], frameworks: pd.DataFrame) -> dict:
    """What machine_header says of one machine kind's runs."""
    run = runs[-1] if runs else {}
    threads = run.get("settings", {}).get("threads")
    ordered = sorted(_records(frameworks), key=lambda r: str(r.get("finished") or ""))
    around = [x for r in ordered for x in map(_first_load, (r.get("loadavg_start"),
                                                          r.get("loadavg_end"))) if x is not None]
    before = _first_load(runs[0].get("loadavg")) if runs else None
    after = _first_load(ordered[-1].get("loadavg_end")) if ordered else None
    worlds = run.get("settings", {}).get("world_sizes") or []
    isa = run.get("machine", {}).get("isa")
    loads = [x for x in (before, after, *around) if x is not None]
    return {"m": run.get("machine", {}), "threads": threads, "worlds": worlds,
            "isa": None if isa is None else [ISA_NAMES.get(f, f) for f in isa],
            "before": before, "after": after, "around": around,
            "max_load": max(loads, default=None),
            "used": threads * max(worlds) if threads is not None and worlds else threads,
            "measured": [p["peak_flops"] / 1e9 for p in _peak_measurements(frameworks)],
            "measured_bf16": [p["peak_flops"] / 1e9
                              for p in _peak_measurements(frameworks, bf16=True)],
            "bf16_units": bf16_units(run.get("machine", {})),
            "old_peak": run.get("peak", {}).get("peak_flops")
            if isinstance(run.get("peak"), dict) else None}


def by_machine(runs: list[dict], frameworks: pd.DataFrame, table: pd.DataFrame | None = None
               ) -> list[tuple[str | None, list[dict], pd.DataFrame, pd.DataFrame | None]]:
    """(kind, its run records, its framework records, its rows of `table`) per machine kind
    (records.machine_slug) of merged records of several kinds; else one (None, all of them)."""
    kinds = _machine_kinds(runs)
    if len(kinds) <= 1 or "machine" not in frameworks or (table is not None
                                                           and "machine" not in table):
        return [(None, runs, frameworks, table)]
    return [(kind, [r for r in runs if machine_slug(r.get("machine") or {}) == kind],
             frameworks[frameworks["machine"] == kind],
             None if table is None else table[table["machine"] == kind]) for kind in kinds]


def machine_header(runs: list[dict], frameworks: pd.DataFrame) -> str:
    """One paragraph: the CPU, cores and threads, the 1-minute load average before, around
    and after the frameworks' runs, and the float32 matmul peaks. Merged records of
    several machine kinds: a paragraph per kind, of its own runs."""
    machines = [{"kind": kind, **_machine_figures(kind_runs, kind_frameworks)}
                for kind, kind_runs, kind_frameworks, _ in by_machine(runs, frameworks)]
    return render("machine_header.md.j2", machines=machines).rstrip("\n")


def _machine_kinds(runs: list[dict]) -> list[str]:
    """The machine kinds (records.machine_slug) of these run records, in order."""
    return list(dict.fromkeys(machine_slug(r.get("machine") or {}) for r in runs))


def _machine_lines(run: dict, table: pd.DataFrame, frameworks: pd.DataFrame) -> str:
    """The Machine section's list: CPU, threads and device, OS, how the peak was measured,
    the commit."""
    measured = _peak_measurements(frameworks)
    bf16 = _peak_measurements(frameworks, bf16=True)
    devices = sorted({str(d) for d in table.get("device", pd.Series(dtype=object)).dropna()})
    return render("machine_lines.md.j2", run=run, m=run.get("machine", {}),
                  s=run.get("settings", {}), git=run.get("git", {}), measured=bool(measured),
                  peak=measured[0] if measured else run.get("peak") or {},
                  bf16_peak=bf16[0] if bf16 else None,
                  devices=devices or [str(run.get("settings", {}).get("device"))]).rstrip("\n")


def _versions_table(table: pd.DataFrame) -> str:
    rows = table[table["versions"].map(lambda v: isinstance(v, str))] if "versions" in table \
        else table.iloc[0:0]
    return markdown_table(rows, [("framework", "framework", "{}"), ("versions", "libraries", "{}"),
                                 ("python", "Python", "{}"), ("device", "device", "{}"),
                                 ("repeats", "runs", "{}")])


def page_link(results_dir: Path, page: Path) -> Callable[[str], str]:
    """The link from the markdown file `page` to a file of `results_dir`, by name."""
    rel = Path(os.path.relpath(results_dir.resolve(), page.resolve().parent)).as_posix()
    return (lambda name: name) if rel == "." else (lambda name: f"{rel}/{name}")
