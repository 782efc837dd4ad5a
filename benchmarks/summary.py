"""A run's records as figures: reading records.jsonl, and one framework run's record
summarised (step times, MFU, throughput, memory, losses, generation) for the reports of
every profile (benchmarks.report, and the sweep's, benchmarks.sweep_report).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmarks.mfu import mfu, train_flops_per_step
from benchmarks.records import (
    RECORDS_NAME,
    bf16_units,
    read_records,
    record_machines,
    record_runs,
    session_choice,
)
from benchmarks.sweep import point_key
from charrnn.common.config import BF16_MIXED, FP32
from charrnn.common.logs import bits

# The time columns that show their spread over repeats: "median (min–max)".
SPREAD = ("s_per_epoch", "wall_s_per_epoch", "chars_per_s", "step_ms", "first_step_s",
          "gen_chars_per_s", "batch_gen_chars_per_s")
# Over repeats a row shows the median, except: these add up or take the worst.
AGGREGATE = {"stalls": "sum", "peak_diff": "max", "step_max_ms": "max", "load_min": "min",
             "load_max": "max"}


def results_records(results_dir: str | Path) -> list[dict]:
    """The records of RESULTS_DIR/records.jsonl (records.read_records: a line cut by a crash
    is left out, the rest still counts); one line when there is no such file."""
    path = Path(results_dir) / RECORDS_NAME
    if not path.exists():
        raise SystemExit(f"error: {path}: no records (run python -m benchmarks.run_all first)")
    return read_records(path)


def load_records(results_dir: str | Path) -> tuple[list[dict], pd.DataFrame]:
    """(run records, framework records) of records.jsonl; the last record of each
    (framework, repeat, cell, sweep point, world size) wins (a resumed run may have
    skipped it first). Where the records come from several machine kinds (merged), each
    framework record gets the kind of the run record before it (records.record_machines)
    as its "machine"."""
    path = Path(results_dir) / RECORDS_NAME
    records = results_records(results_dir)
    df = pd.json_normalize(records, max_level=0) if records else pd.DataFrame()
    if df.empty or "kind" not in df:
        raise SystemExit(f"error: {path}: no records")
    runs = [r for r in records if r.get("kind") == "run"]
    frameworks = df[df["kind"] == "framework"].copy()
    if "repeat" not in frameworks:
        frameworks["repeat"] = 0
    frameworks["repeat"] = frameworks["repeat"].fillna(0).astype(int)
    machines = record_machines(records)
    if len(set(filter(None, machines))) > 1:
        frameworks["machine"] = [machines[i] for i in frameworks.index]
    # What each record's machine had for bf16 products (a bf16 row's label).
    units = [bf16_units((run or {}).get("machine") or {}) for run in record_runs(records)]
    frameworks["bf16_units"] = [units[i] for i in frameworks.index]
    # A sweep's records are one per point as well (benchmarks.sweep), a run over --cells's
    # one per cell, a scaling run's one per world size.
    frameworks["point_key"] = [point_key(r) for r in _records(frameworks)]
    frameworks["cell"] = [cell_of(r) for r in _records(frameworks)]
    frameworks["world"] = [int(r.get("world_size") or 0) for r in _records(frameworks)]
    frameworks = frameworks.drop_duplicates(
        ["framework", "repeat", "point_key", "cell", "world",
         *(["machine"] if "machine" in frameworks else [])], keep="last")
    return runs, frameworks.drop(columns="world").reset_index(drop=True)


def cell_of(record: dict) -> str:
    """The cell a framework record trained: its own field (a run over --cells), else the
    model config its log names, else the LSTM (records from before the cells)."""
    model = _get(record.get("header"), "model_config")
    return record.get("cell") or _get(model, "cell") or "lstm"


def _get(d, key, default=None):
    return d.get(key, default) if isinstance(d, dict) else default


def _present(row: dict) -> dict:
    """A record as pandas hands it back, without the NaNs that stand for absent fields."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def _records(frameworks: pd.DataFrame) -> list[dict]:
    return [_present(r) for r in frameworks.to_dict("records")]


def _mean(values) -> float | None:
    present = [v for v in values if v]
    return sum(present) / len(present) if present else None


def step_stats(epochs: list[dict]) -> dict:
    """The step-time distribution of a run from its epochs' (common.train step_time_stats):
    the median of the epochs' median steps, the worst epoch's p90, p99 and max, and the
    stalls of all epochs. None where the records predate a field."""
    def values(key):
        return [e[key] for e in epochs if e.get(key) is not None]
    medians, p90, p99, top, stalls = map(values, ("step_s_median", "step_s_p90", "step_s_p99",
                                                  "step_s_max", "stalls"))
    return {"step_s": float(pd.Series(medians).median()) if medians else None,
            "step_p90_s": max(p90, default=None), "step_p99_s": max(p99, default=None),
            "step_max_s": max(top, default=None), "stalls": sum(stalls) if stalls else None}


def peaks(record: dict) -> dict:
    """The float32 matmul peaks of a run: measured before and after it, the mean of the two
    (what its MFU is measured against), and how far apart they are (max / min - 1).
    Older records carry one peak, measured at the start of the whole run. A bf16 row's
    record also has the bf16 peaks, each measured in the same minute as a float32 one:
    their mean and how far apart they are; its peak_diff is the larger of the two."""
    before, after = (_get(record.get(k), "peak_flops") for k in ("peak_before", "peak_after"))
    bf16 = [_get(record.get(k), "peak_flops") for k in ("peak_bf16_before", "peak_bf16_after")]
    diffs = [max(a, b) / min(a, b) - 1 for a, b in ((before, after), bf16) if a and b]
    return {"peak_before_flops": before, "peak_after_flops": after,
            "peak_flops": _mean([before, after]) or record.get("peak_flops"),
            "peak_bf16_flops": _mean(bf16),
            "peak_diff": max(diffs) if diffs else None}


def generation_figures(record: dict) -> dict:
    """One stream's rate, the sampler's share of its time and the rate without it, and the
    batch's rate with every stream's characters counted."""
    gen = record.get("generation") if isinstance(record.get("generation"), dict) else {}
    batch = (record.get("generation_batch") if isinstance(record.get("generation_batch"), dict)
             else {})
    duration, sampler = gen.get("duration_s"), gen.get("sampler_s")
    without = duration - sampler if duration and sampler is not None else None
    return {
        "gen_chars_per_s": gen.get("chars_per_s"), "gen_first_step_s": gen.get("first_step_s"),
        "gen_sampler_s": sampler,
        "gen_sampler_share": sampler / duration if duration and sampler is not None else None,
        "gen_model_chars_per_s": gen["chars"] / without if without and without > 0 else None,
        "batch_gen_chars_per_s": batch.get("total_chars_per_s"),
        "batch_gen_first_step_s": batch.get("first_step_s"),
        "batch_gen_samples": batch.get("num_samples"),
    }


# The generation rates of a summary row: one stream and the batch.
GENERATION_COLUMNS = ("gen_chars_per_s", "batch_gen_chars_per_s")


def generates(table: pd.DataFrame) -> bool:
    """Whether any row of a summary table has a generation rate (a scaling, bf16-long or
    sweep-bf16 run generates nothing: its reports leave generation out)."""
    return any(c in table and bool(table[c].notna().any()) for c in GENERATION_COLUMNS)


def summarise(record: dict) -> dict:
    """The measurements of one framework run, from its raw record.

    duration_s sums the epochs' training time (no start-up, validation or
    checkpointing); wall_s_per_epoch is that over the epochs trained (a fraction for
    a partial epoch). s_per_epoch is the median step (after the first, which is
    reported apart as first_step_s: compilation and warm-up) times the batches of an
    epoch: what the framework takes, without the machine's hiccups; chars/s and MFU
    are measured from the same median step.
    """
    header = record.get("header") or {}
    epochs = record.get("epochs") or []
    versions = header.get("versions") or {}
    loads = [record[key][0] for key in ("loadavg_start", "loadavg_end")
             if isinstance(record.get(key), list) and record[key]]
    precision = record.get("precision") or FP32
    row = {"framework": record["framework"], "cell": cell_of(record),
           "precision": precision, "engine": bool(record.get("engine")),
           "bf16_units": record.get("bf16_units") if precision == BF16_MIXED else None,
           **{k: record[k] for k in ("world_size", "machine") if record.get(k) is not None},
           "repeat": int(record.get("repeat") or 0),
           "status": record.get("status"), "stage": record.get("stage"),
           "error": record.get("error"),
           "version": next(iter(versions.values()), None),
           "versions": ", ".join(f"{k} {v}" for k, v in versions.items()) or None,
           "device": header.get("device"), "threads": header.get("threads"),
           "stall_factor": header.get("stall_factor"),
           "python": header.get("python"), "num_params": header.get("num_params"),
           "load_min": min(loads, default=None), "load_max": max(loads, default=None),
           **generation_figures(record),
           "gen_peak_mb": _get(record.get("generate_process"), "max_rss_mb"),
           "batch_gen_peak_mb": _get(record.get("generate_batch_process"), "max_rss_mb"),
           "session_choice": session_choice(record)}
    if not epochs:
        return row
    last = epochs[-1]
    steps = last["step"]
    train_batches, chars_per_batch = header.get("train_batches"), header.get("chars_per_batch")
    duration_s = sum(e.get("duration_s") or 0.0 for e in epochs)
    epochs_trained = steps / train_batches if train_batches else float(len(epochs))
    stats = step_stats(epochs)
    step_s = stats["step_s"]
    flops_step = (train_flops_per_step(header["flops_per_char"], chars_per_batch)
                  if header.get("flops_per_char") and chars_per_batch else None)
    peak = peaks(record)
    # A bf16 row's MFU is against the bf16 peak; every other row's against the float32 one.
    against = peak["peak_bf16_flops"] if precision == BF16_MIXED else peak["peak_flops"]

    def ms(seconds):
        return 1000 * seconds if seconds is not None else None
    row.update({
        "steps": steps, "epochs": epochs_trained, "duration_s": duration_s,
        "s_per_epoch": step_s * train_batches if step_s and train_batches else None,
        "wall_s_per_epoch": duration_s / epochs_trained if epochs_trained else None,
        "chars_per_s": chars_per_batch / step_s if step_s and chars_per_batch else None,
        "wall_chars_per_s": steps * (chars_per_batch or 0) / duration_s if duration_s else None,
        "step_ms": ms(step_s), "step_p90_ms": ms(stats["step_p90_s"]),
        "step_p99_ms": ms(stats["step_p99_s"]), "step_max_ms": ms(stats["step_max_s"]),
        "stalls": stats["stalls"],
        "first_step_s": epochs[0].get("first_step_s"),
        "val_duration_s": sum(e.get("val_duration_s") or 0.0 for e in epochs),
        "train_loss": last.get("train/loss"), "train_bpc": bits(last.get("train/loss")),
        "val_loss": last.get("val/loss"), "val_bpc": bits(last.get("val/loss")),
        "model_gflops_per_s": flops_step / step_s / 1e9 if flops_step and step_s else None,
        **peak,
        "peak_before_gflops": peak["peak_before_flops"] / 1e9 if peak["peak_before_flops"]
        else None,
        "peak_after_gflops": peak["peak_after_flops"] / 1e9 if peak["peak_after_flops"]
        else None,
        "peak_bf16_gflops": peak["peak_bf16_flops"] / 1e9 if peak["peak_bf16_flops"]
        else None,
        # W processes of `threads` threads each: against W peaks of that many threads.
        "mfu": mfu(header.get("flops_per_char"), chars_per_batch, step_s,
                   against * (record.get("world_size") or 1) if against else None),
        "peak_mb": _get(record.get("train_process"), "max_rss_mb"),
        "train_wall_s": _get(record.get("train_process"), "wall_s"),
    })
    return row


def aggregate_repeats(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group of `keys` (in the order they ran) of summarised runs: each
    measurement over the group's successful repeats (AGGREGATE's, else the median), with
    `column_min` and `column_max` for SPREAD's columns, and "repeats", how many succeeded;
    a group that never succeeded keeps its last run (with its status and error)."""
    group = rows.groupby(keys, sort=False, dropna=False).ngroup()  # numbered as they ran
    ok = rows["status"] == "ok"
    runs = rows[ok | (~ok.groupby(group).transform("any") & ~group.duplicated(keep="last"))]
    numeric = [c for c in rows.columns if c not in (*keys, "repeat")
               and pd.api.types.is_numeric_dtype(rows[c])
               and not pd.api.types.is_bool_dtype(rows[c])]
    how = {}
    for c in numeric:  # a sum of none is none, not 0 (an older record without the field)
        agg = AGGREGATE.get(c, "median")
        how[c] = (c, (lambda v: v.sum(min_count=1)) if agg == "sum" else agg)
        if c in SPREAD:
            how[f"{c}_min"], how[f"{c}_max"] = (c, "min"), (c, "max")
    run_group = group[runs.index]
    last = runs[~run_group.duplicated(keep="last")]  # whose text fields (status, error) show
    out = (last.set_axis(run_group[last.index]).drop(columns=numeric)
           .join(runs.groupby(run_group).agg(**how))
           .join(ok.groupby(group).sum().rename("repeats")).sort_index())
    return out.reset_index(drop=True)[[*rows.columns, *(c for c in how if c not in rows),
                                       "repeats"]]


def _peak_measurements(frameworks: pd.DataFrame, bf16: bool = False) -> list[dict]:
    """Every float32 (or bf16: the bf16 rows') peak measurement of the framework records
    (before and after each run)."""
    keys = ("peak_bf16_before", "peak_bf16_after") if bf16 else ("peak_before", "peak_after")
    return [r[k] for r in _records(frameworks) for k in keys
            if isinstance(r.get(k), dict) and r[k].get("peak_flops")]
