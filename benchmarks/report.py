"""The benchmark report, from the records `run_all` wrote, and nothing else.

    python -m benchmarks.report benchmarks/results/quick
    python -m benchmarks.report benchmarks/results/full --compare-original
    python -m benchmarks.report benchmarks/results/quick --reference   # make reference-results

Reads RESULTS_DIR/records.jsonl with pandas, prints the table in markdown and
writes beside the records:

    results.csv          one row per framework (medians over repeats)
    report.md            the table, the machine, what was trained, failures, samples
    loss_per_epoch.png   train and validation loss against epochs
    loss_vs_time.png     the same against training seconds
    throughput.png       training and generation characters per second

--compare-original sets the original suite's numbers beside this run's.
--reference publishes the run as this machine's reference results: its records.jsonl
is copied to benchmarks/reference/<machine>/<profile>/ (<machine> is the CPU model
and core count, e.g. amd-epyc-2core: benchmarks.records.machine_slug), the report is
written there, and the block between the results markers of README.md is rewritten
to show it. Those files, and nothing else of a run, are committed.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import pandas as pd

from benchmarks.mfu import mfu, train_flops_per_step
from benchmarks.plot import Curve, plot_losses, plot_throughput
from benchmarks.records import RECORDS_NAME, REFERENCE_ROOT, machine_slug
from common.fileio import atomic_write_text
from common.logs import bits, format_duration, read_jsonl
from common.paths import ROOT

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
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

# The table of report.md and README: (column, header, format).
TABLE = [
    ("framework", "framework", "{}"),
    ("version", "version", "{}"),
    ("duration_s", "duration", "duration"),
    ("s_per_epoch", "s/epoch", "{:,.1f}"),
    ("chars_per_s", "chars/s", "{:,.0f}"),
    ("step_ms", "step ms", "{:,.1f}"),
    ("first_step_s", "first step s", "{:,.2f}"),
    ("mfu", "MFU", "pct"),
    ("peak_mb", "peak MiB", "{:,.0f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("val_bpc", "val bpc", "{:.3f}"),
    ("gen_chars_per_s", "gen chars/s", "{:,.0f}"),
]


# ---------------------------------------------------------------------------------------
# Records -> one row per framework
# ---------------------------------------------------------------------------------------


def load_records(results_dir: str | Path) -> tuple[list[dict], pd.DataFrame]:
    """(run records, framework records) of records.jsonl; the last record of each
    (framework, repeat) wins (a resumed run may have skipped it first)."""
    path = Path(results_dir) / RECORDS_NAME
    if not path.exists():
        raise SystemExit(f"error: {path}: no records (run python -m benchmarks.run_all first)")
    records = read_jsonl(path)  # a line cut by a crash is left out; the rest still counts
    df = pd.json_normalize(records, max_level=0) if records else pd.DataFrame()
    if df.empty or "kind" not in df:
        raise SystemExit(f"error: {path}: no records")
    runs = [r for r in records if r.get("kind") == "run"]
    frameworks = df[df["kind"] == "framework"].copy()
    if "repeat" not in frameworks:
        frameworks["repeat"] = 0
    frameworks["repeat"] = frameworks["repeat"].fillna(0).astype(int)
    frameworks = frameworks.drop_duplicates(["framework", "repeat"], keep="last")
    return runs, frameworks.reset_index(drop=True)


def _get(d, key, default=None):
    return d.get(key, default) if isinstance(d, dict) else default


def _present(row: dict) -> dict:
    """A record as pandas hands it back, without the NaNs that stand for absent fields."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def _records(frameworks: pd.DataFrame) -> list[dict]:
    return [_present(r) for r in frameworks.to_dict("records")]


def summarise(record: dict) -> dict:
    """The measurements of one framework run, from its raw record.

    duration_s sums the epochs' training time (no start-up, validation or
    checkpointing); s_per_epoch is that over the epochs trained (a fraction for a
    partial epoch); step_ms the median step after the first, which is reported
    apart (first_step_s: compilation and warm-up).
    """
    header = record.get("header") or {}
    epochs = record.get("epochs") or []
    gen = record.get("generation") if isinstance(record.get("generation"), dict) else {}
    versions = header.get("versions") or {}
    row = {"framework": record["framework"], "repeat": int(record.get("repeat") or 0),
           "status": record.get("status"), "stage": record.get("stage"),
           "error": record.get("error"),
           "version": next(iter(versions.values()), None),
           "versions": ", ".join(f"{k} {v}" for k, v in versions.items()) or None,
           "device": header.get("device"), "threads": header.get("threads"),
           "python": header.get("python"), "num_params": header.get("num_params")}
    if not epochs:
        return row
    last = epochs[-1]
    steps = last["step"]
    train_batches = header.get("train_batches")
    duration_s = sum(e.get("duration_s") or 0.0 for e in epochs)
    epochs_trained = steps / train_batches if train_batches else float(len(epochs))
    step_medians = [e["step_s_median"] for e in epochs if e.get("step_s_median")]
    step_s = float(pd.Series(step_medians).median()) if step_medians else None
    chars = steps * (header.get("chars_per_batch") or 0)
    flops_step = (train_flops_per_step(header["flops_per_char"], header["chars_per_batch"])
                  if header.get("flops_per_char") and header.get("chars_per_batch") else None)
    row.update({
        "steps": steps, "epochs": epochs_trained, "duration_s": duration_s,
        "s_per_epoch": duration_s / epochs_trained if epochs_trained else None,
        "chars_per_s": chars / duration_s if duration_s else None,
        "step_ms": 1000 * step_s if step_s else None,
        "first_step_s": epochs[0].get("first_step_s"),
        "val_duration_s": sum(e.get("val_duration_s") or 0.0 for e in epochs),
        "train_loss": last.get("train/loss"), "train_bpc": bits(last.get("train/loss")),
        "val_loss": last.get("val/loss"), "val_bpc": bits(last.get("val/loss")),
        "model_gflops_per_s": flops_step / step_s / 1e9 if flops_step and step_s else None,
        "peak_flops": record.get("peak_flops"),
        "mfu": mfu(header.get("flops_per_char"), header.get("chars_per_batch"), step_s,
                   record.get("peak_flops")),
        "peak_mb": _get(record.get("train_process"), "max_rss_mb"),
        "train_wall_s": _get(record.get("train_process"), "wall_s"),
        "gen_chars_per_s": gen.get("chars_per_s"), "gen_first_step_s": gen.get("first_step_s"),
        "gen_peak_mb": _get(record.get("generate_process"), "max_rss_mb"),
    })
    return row


def summary_table(frameworks: pd.DataFrame) -> pd.DataFrame:
    """One row per framework: the median of each measurement over its repeats."""
    rows = pd.DataFrame([summarise(r) for r in _records(frameworks)])
    if rows.empty:
        return rows
    order = list(dict.fromkeys(rows["framework"]))  # the order they ran in
    numeric = [c for c in rows.columns if c not in ("framework", "repeat")
               and pd.api.types.is_numeric_dtype(rows[c])]
    ok = rows[rows["status"] == "ok"]
    grouped = []
    for name in order:
        runs = rows[rows["framework"] == name]
        good = ok[ok["framework"] == name]
        base = (good if len(good) else runs).iloc[-1].to_dict()
        if len(good) > 1:
            base.update(good[numeric].median(numeric_only=True).to_dict())
        base["repeats"] = len(good)
        if len(good) == 0:  # failed or skipped every time: show why, from the last one
            base["status"] = runs.iloc[-1]["status"]
        grouped.append(base)
    out = pd.DataFrame(grouped).drop(columns=["repeat"])
    return out


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "duration":
        return format_duration(value)
    if fmt == "pct":
        return f"{100 * value:.2f}%"
    return fmt.format(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if f == "{}" else "---:" for _, _, f in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), f) for c, _, f in columns) + " |")
    return "\n".join(lines)


def results_table(table: pd.DataFrame) -> str:
    """The main table: frameworks that trained (ok, or failed only at generation)."""
    trained = table[table["duration_s"].notna()] if "duration_s" in table else table.iloc[0:0]
    return markdown_table(trained.to_dict("records"), TABLE)


def problems(table: pd.DataFrame) -> list[str]:
    lines = []
    for row in table.to_dict("records"):
        if row["status"] == "ok":
            continue
        where = f" at {row['stage']}" if isinstance(row.get("stage"), str) else ""
        lines.append(f"- **{row['framework']}**: {row['status']}{where}: `{row['error']}`")
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


def _load_line(frameworks: pd.DataFrame, threads) -> str | None:
    """The 1-minute load average seen around the runs: above the thread count, other work
    shared the CPU and the times are slower than the machine can do."""
    loads = [r[key][0] for r in _records(frameworks) for key in ("loadavg_start", "loadavg_end")
             if isinstance(r.get(key), list) and r[key]]
    if not loads:
        return None
    busy = threads is not None and max(loads) > threads + 0.5
    return (f"- 1-minute load average at the frameworks' starts and ends: {min(loads):.1f} to "
            f"{max(loads):.1f}" + (f" (above the {threads} threads used: other work shared "
                                   "the CPU, so these times are pessimistic)" if busy else ""))


def _machine_lines(run: dict, table: pd.DataFrame) -> list[str]:
    m, git, peak, s = run.get("machine", {}), run.get("git", {}), run.get("peak", {}), run.get(
        "settings", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)"
                                                      if git.get("dirty") else "")
    peak_flops = peak.get("peak_flops")
    lines = [
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores ({m.get('usable_cores')} usable), "
        f"{m.get('memory_gb')} GB memory",
        f"- threads per framework: {s.get('threads')} (`--threads` and the OMP/MKL/OpenBLAS/"
        "TF/MXNet thread variables); device: " + ", ".join(
            sorted({str(d) for d in table.get("device", pd.Series(dtype=object)).dropna()}) or
            [str(s.get("device"))]),
        f"- OS: {m.get('os')}; runner Python {m.get('runner_python')}",
        "- float32 matmul peak: " + (f"{peak_flops / 1e9:.1f} GFLOP/s (NumPy {peak.get('numpy')}"
                                      f", {peak.get('blas')}, {peak.get('size')}² matrices, best "
                                      f"of {peak.get('repeats')})" if peak_flops else
                                      f"not measured ({peak.get('error')})"),
        f"- git commit {commit}; started {run.get('started')}; load average at start "
        f"{run.get('loadavg')}",
    ]
    return lines


def _versions_table(table: pd.DataFrame) -> str:
    rows = [r for r in table.to_dict("records") if isinstance(r.get("versions"), str)]
    return markdown_table(rows, [("framework", "framework", "{}"), ("versions", "libraries", "{}"),
                                 ("python", "Python", "{}"), ("device", "device", "{}"),
                                 ("repeats", "runs", "{}")])


def _samples(frameworks: pd.DataFrame) -> list[str]:
    out = []
    for record in _records(frameworks):
        gen = record.get("generation")
        if record.get("repeat", 0) != 0 or not isinstance(gen, dict) or not gen.get("text"):
            continue
        text = gen["text"][:SAMPLE_CHARS].replace("```", "'''")
        out += [f"### {record['framework']}", "", "```", text.rstrip("\n"), "```", ""]
    return out


def render_report(runs: list[dict], table: pd.DataFrame, frameworks: pd.DataFrame,
                  compare: bool) -> str:
    run = runs[-1] if runs else {}
    s = run.get("settings", {})
    first = runs[0] if runs else {}
    gen_length = s.get("gen_length")
    lines = [f"# Benchmark: {s.get('profile', '?')} profile", "",
             f"What it trains: {first.get('description', run.get('description', '?'))}.", "",
             f"Every framework started from the same initial weights (`--random-seed "
             f"{s.get('random_seed')}`), in a fresh process of its own environment, on "
             f"`{Path(s.get('text_path', '?')).name}` (sha256 {str(s.get('text_sha256'))[:12]}), "
             f"with {s.get('train_batches')} batches of {s.get('chars_per_batch')} characters "
             f"per epoch" + (f" and `{' '.join(s['extra_train_args'])}`"
                             if s.get("extra_train_args") else "") + ".", "",
             results_table(table), ""]
    bad = problems(table)
    if bad:
        lines += ["Not in the table, or without a generation speed:", "", *bad, ""]
    lines += [
        "How to read it: *duration* is the sum of the epochs' training time (no start-up, "
        "validation or checkpointing); *s/epoch* is that over the epochs trained (a fraction "
        "of an epoch when `--max-steps` stops early, so it includes the first step); "
        "*step ms* is the median training step after the first; *first step s* is the first "
        "step, compilation and warm-up included; *MFU* is the model's training FLOPs per step "
        "(3 x forward matmul FLOPs per character x characters per batch) over the step time, "
        "as a share of the measured float32 matmul peak below; *peak MiB* is the training "
        "process's maximum resident memory (wait4 `ru_maxrss`); *losses* are the last "
        "epoch's mean training batch loss and the validation loss, in nats per character "
        f"(bpc = bits per character); *gen chars/s* is `generate --length {gen_length}` from "
        "the checkpoint just trained (top-3 sampling, fixed seed), first step included. "
        + ("Numbers are medians over repeats." if (table.get("repeats", pd.Series([1])) > 1).any()
           else "One run per framework."), "",
        "![loss per epoch](loss_per_epoch.png)", "", "![loss versus time](loss_vs_time.png)", "",
        "![throughput](throughput.png)", "",
        "## Machine", "", *_machine_lines(run, table),
        *filter(None, [_load_line(frameworks, s.get("threads"))]), "",
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


def readme_block(table: pd.DataFrame, run: dict, results_dir: Path, readme: Path) -> str:
    """The README's results block: the table and links to the plots and the full report."""
    try:
        rel = results_dir.resolve().relative_to(readme.resolve().parent).as_posix()
    except ValueError:
        rel = results_dir.resolve().as_posix()
    link = (lambda name: name) if rel == "." else (lambda name: f"{rel}/{name}")
    s, m = run.get("settings", {}), run.get("machine", {})
    return "\n".join([
        README_START,
        f"Profile `{s.get('profile')}` on {m.get('cpu')} ({s.get('threads')} threads), "
        f"{str(run.get('started', ''))[:10]}; full report: "
        f"[{link('report.md')}]({link('report.md')}).",
        "", results_table(table), "",
        f"![loss per epoch]({link('loss_per_epoch.png')}) "
        f"![loss versus time]({link('loss_vs_time.png')}) "
        f"![throughput]({link('throughput.png')})",
        README_END])


def update_readme(readme: Path, block: str) -> bool:
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        print(f"{readme}: no {README_START} ... {README_END} markers; README not updated",
              file=sys.stderr)
        return False
    atomic_write_text(readme, text[:start] + block + text[end + len(README_END):])
    return True


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def curves(frameworks: pd.DataFrame) -> list[Curve]:
    """First successful run of each framework, as loss curves."""
    out, seen = [], set()
    for r in _records(frameworks):
        epochs = r.get("epochs")
        if r["framework"] in seen or not isinstance(epochs, list) or not epochs:
            continue
        seen.add(r["framework"])
        header = r.get("header") if isinstance(r.get("header"), dict) else {}
        steps = r.get("steps") if isinstance(r.get("steps"), list) else []
        out.append(Curve(r["framework"], header.get("train_batches"), epochs, steps))
    return out


def build(results_dir: str | Path, compare: bool = False) -> tuple[pd.DataFrame, str, list[dict]]:
    """Write every report file into `results_dir`; (table, report.md text, run records)."""
    results_dir = Path(results_dir)
    runs, frameworks = load_records(results_dir)
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
    rows = [(r["framework"], r.get("chars_per_s"), r.get("gen_chars_per_s"))
            for r in table.to_dict("records")]
    plot_throughput(rows, results_dir / "throughput.png",
                    title=f"Characters per second ({profile} profile)")
    text = render_report(runs, table, frameworks, compare)
    atomic_write_text(results_dir / "report.md", text)
    return table, text, runs


def publish_reference(results_dir: Path) -> Path:
    """Copy the records of `results_dir` to benchmarks/reference/<machine>/<profile>/ (the
    machine and profile of its run record); that directory."""
    runs, _ = load_records(results_dir)
    if not runs:
        raise SystemExit(f"error: {results_dir / RECORDS_NAME}: no run record, so no machine "
                         "to file the reference under")
    run = runs[0]
    dest = REFERENCE_ROOT / machine_slug(run.get("machine", {})) / run["settings"]["profile"]
    if dest.resolve() != results_dir.resolve():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results_dir / RECORDS_NAME, dest / RECORDS_NAME)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="directory with records.jsonl")
    parser.add_argument("--compare-original", action="store_true",
                        help="print the original suite's duration and loss beside this run's "
                        "(and add them to report.md)")
    parser.add_argument("--reference", action="store_true",
                        help="publish as this machine's committed reference results: copy the "
                        "records to benchmarks/reference/<machine>/<profile>/, report there and "
                        "rewrite the results block of README.md")
    args = parser.parse_args(argv)
    results_dir = publish_reference(args.results_dir) if args.reference else args.results_dir
    table, _, runs = build(results_dir, compare=args.compare_original)
    print(results_table(table))
    for line in problems(table):
        print(line)
    if args.compare_original:
        print()
        print(compare_original(table))
    print(f"\nreport: {results_dir / 'report.md'}")
    if args.reference:
        readme = ROOT / "README.md"
        if update_readme(readme, readme_block(table, runs[-1], results_dir, readme)):
            print(f"updated the results block of {readme.name}")


if __name__ == "__main__":
    main()
