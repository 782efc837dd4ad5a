"""The sweep (`run_all --profile sweep`): its points, a real tiny sweep end to end (a
framework that times out or is killed at one point does not stop it, --resume skips
the points recorded), and its report on saved records:

- tests/data/sweep/records.jsonl: a real tiny sweep (--seq-len 8 --embedding-size 8,
  6 steps, --rnn-sizes 16,32,64 --batch-sizes 1,8, --timeout 10) of numpy, pytorch and
  "flaky", a script registered like those of tests/test_benchmarks.py that sleeps past
  the timeout at rnn size 16, is killed by SIGKILL at 32 (as by the out-of-memory
  killer) and runs numpy_model.py at the other points (FLAKY below). Its timeout error
  was shortened to the current wording.

No test asserts a timing: the expected tables are computed from the raw records.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from charrnn.common import registry
from charrnn.common.cli import parse_args
from charrnn.common.config import TrainConfig
from charrnn.common.paths import ROOT
from tests.conftest import TEXT

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks import records, report, run_all  # noqa: E402
from benchmarks import sweep_report as scaling  # noqa: E402
from benchmarks.sweep import Grid, Point, parse_sizes, point_of  # noqa: E402
from tests.markdown import unpad
from tests.test_benchmarks import (  # noqa: E402
    PNG_MAGIC,
    SWEEP_FILES,
    framework_records,
    run_all_command,
)

DATA = Path(__file__).resolve().parent / "data" / "sweep"
FLAKY = """import os, signal, sys, time
from pathlib import Path
args = sys.argv[1:]
size = args[args.index("--rnn-size") + 1] if "--rnn-size" in args else None
if size == "16":
    time.sleep(120)  # past --timeout
if size == "32":
    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
os.execv(sys.executable, [sys.executable, str(Path.cwd() / "numpy_model.py"), *args])
"""


def sweep_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    """run_all flags of a tiny sweep: three points, 4 steps each, 50 generated characters."""
    return ["--profile", "sweep", "--rnn-sizes", "16,32", "--batch-sizes", "1",
            "--text-path", str(corpus), "--extra-train-args", "--seq-len 8 --embedding-size 8",
            "--max-steps", "4", "--gen-length", "50", "--matmul-size", "128", "--threads", "1",
            "--timeout", "8", "--out", str(out), *extra]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def saved(tmp_path) -> Path:
    """A copy of the saved sweep's records, for the report to write beside."""
    shutil.copy(DATA / "records.jsonl", tmp_path)
    return tmp_path


def raw_records() -> list[dict]:
    return [r for r in map(json.loads, (DATA / "records.jsonl").read_text().splitlines())
            if r["kind"] == "framework"]


def step_s(record: dict) -> float:
    return float(np.median([e["step_s_median"] for e in record["epochs"]]))


# ---------------------------------------------------------------------------------------
# The points and the settings
# ---------------------------------------------------------------------------------------


def test_grid_crosses_its_axes_at_the_default_model_once():
    grid = Grid()
    points = grid.points()
    assert [p.key for p in points] == [
        "rnn64-batch64", "rnn128-batch64", "rnn256-batch64", "rnn512-batch64",
        "rnn128-batch1", "rnn128-batch16", "rnn128-batch256"]
    assert grid.on_rnn_axis(Point(128, 64)) and grid.on_batch_axis(Point(128, 64))
    assert not grid.on_rnn_axis(Point(128, 16)) and not grid.on_batch_axis(Point(256, 64))
    assert grid.axis_sizes("batch_size") == [1, 16, 64, 256]
    # The crossing point is on both axes where either measures it.
    assert Grid(batch_sizes=(1, 16)).axis_sizes("batch_size") == [1, 16, 64]
    assert Grid((16, 32), (1, 8)).axis_sizes("rnn_size") == [16, 32]
    assert Point(256, 64).apply(TrainConfig(rnn_size=16, seq_len=8)) == TrainConfig(
        rnn_size=256, batch_size=64, seq_len=8)  # the point's sizes win
    assert Grid.from_dict(json.loads(json.dumps(grid.as_dict()))) == grid
    assert point_of({"point": {"rnn_size": 32, "batch_size": 8}}) == Point(32, 8)
    assert point_of({"framework": "numpy"}) is None


def test_sizes_flags_are_checked():
    assert parse_sizes("64, 128,256", "--rnn-sizes") == (64, 128, 256)
    for bad in ("64,x", "0,16", "16,16", ""):
        with pytest.raises(SystemExit, match="--batch-sizes"):
            parse_sizes(bad, "--batch-sizes")
    with pytest.raises(SystemExit, match="need --profile sweep"):
        run_all.resolve_settings(run_all.parse_args(["--rnn-sizes", "64"]))


def test_sweep_settings_and_each_point_s(corpus):
    args = run_all.parse_args(["--profile", "sweep", "--text-path", str(corpus),
                               "--rnn-sizes", "16,32", "--batch-sizes", "1,4",
                               "--extra-train-args", "--seq-len 8"])
    settings = run_all.resolve_settings(args)
    assert settings.max_steps == run_all.SWEEP_STEPS >= 21  # the first step + 20 timed
    assert (settings.train.val_fraction, settings.train.seq_len) == (0, 8)  # no validation
    assert settings.identity()["extra_train_args"] == ["--seq-len", "8", "--val-fraction", "0"]
    assert settings.profile == "custom" and "--rnn-size 16, 32 at --batch-size 64" in (
        settings.description)
    identity = json.loads(json.dumps(settings.identity()))  # as --resume reads it back
    assert identity == settings.identity() and identity["grid"]["batch_sizes"] == [1, 4]
    plans = run_all.point_plans(run_all.make_plan(args))
    assert [p.key for _, p in plans] == ["rnn16-batch64", "rnn32-batch64", "rnn128-batch1",
                                      "rnn128-batch4"]
    at = plans[None, Point(128, 4)]
    assert at.settings.chars_per_batch == 4 * 8 and at.generations == ()
    assert at.settings.train == TrainConfig(rnn_size=128, batch_size=4, seq_len=8,
                                            val_fraction=0.0)
    assert plans[None, Point(16, 64)].generations == (1,)  # one stream, at the rnn sizes only
    assert at.init_path.name == "init-rnn128-batch4.safetensors"
    assert at.run_dir(registry.FRAMEWORKS["numpy"], 0).parts[-3:] == (
        "numpy", "rnn128-batch4", "0")
    # A run of one point keeps its settings, paths and generations.
    quick = run_all.make_plan(run_all.parse_args(["--text-path", str(corpus),
                                                  "--extra-train-args", "--seq-len 8"]))
    assert run_all.point_plans(quick) == {(None, None): quick}
    assert "grid" not in quick.settings.identity()


def test_points_take_turns_and_resume_skips_recorded_points(capsys):
    entries = [registry.Entry(name, "numpy_model", "any", "numpy") for name in "ab"]
    points = [(None, Point(16, 64)), (None, Point(128, 1))]
    todo = run_all.pending(entries, 1, [], points)
    assert [(j.row.name, j.point.key) for j in todo] == [
        ("a", "rnn16-batch64"), ("b", "rnn16-batch64"), ("a", "rnn128-batch1"),
        ("b", "rnn128-batch1")]
    done = [{"kind": "framework", "framework": "a", "repeat": 0, "status": "timeout",
             "point": {"rnn_size": 16, "batch_size": 64}}]
    todo = run_all.pending(entries, 1, done, points)
    assert [j.label(1) for j in todo] == ["b at rnn16-batch64", "a at rnn128-batch1",
                                          "b at rnn128-batch1"]
    assert "a at rnn16-batch64: already recorded" in capsys.readouterr().err
    assert todo[0].key == "b rnn16-batch64"


def test_a_killed_child_says_so():
    assert records.exit_reason(-9) == "killed by SIGKILL (out of memory?)"
    assert records.exit_reason(-15) == "killed by SIGTERM"
    assert records.exit_reason(1) == "exit status 1"


# ---------------------------------------------------------------------------------------
# A real sweep
# ---------------------------------------------------------------------------------------


def test_dry_run_prints_each_point_s_commands(corpus, tmp_path):
    proc = subprocess.run([*run_all_command(), "--frameworks", "numpy",
                           *sweep_args(corpus, tmp_path / "out"), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("#")] == [
        "# numpy at rnn16-batch64", "# numpy at rnn32-batch64", "# numpy at rnn128-batch1"]
    words = shlex.split(lines[1])
    command, train = parse_args(words[words.index("train"):], "test")  # as the child reads it
    assert (train.rnn_size, train.batch_size, train.seq_len, train.embedding_size) == (
        16, 64, 8, 8) and (train.val_fraction, train.max_steps) == (0, 4)
    assert "init-rnn16-batch64.safetensors" in lines[1] and " generate " in lines[2]
    assert lines[-2] == "# numpy at rnn128-batch1" and " train " in lines[-1]  # no generate
    assert "--num-samples" not in proc.stdout


def test_sweep_goes_on_past_a_failed_point_and_resumes(corpus, tmp_path):
    flaky = tmp_path / "flaky.py"
    flaky.write_text(FLAKY)
    out = tmp_path / "results"
    cmd = [*run_all_command({"flaky": flaky}), "--frameworks", "numpy,flaky",
           *sweep_args(corpus, out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = {(r["framework"], point_of(r).key): r for r in framework_records(out)}
    assert list(got) == [(name, key) for key in ("rnn16-batch64", "rnn32-batch64",
                                                 "rnn128-batch1") for name in ("numpy", "flaky")]
    assert all(got["numpy", key]["status"] == "ok" for key in ("rnn16-batch64", "rnn32-batch64",
                                                               "rnn128-batch1"))
    timeout, killed = got["flaky", "rnn16-batch64"], got["flaky", "rnn32-batch64"]
    assert (timeout["status"], timeout["stage"]) == ("timeout", "train")
    assert timeout["error"].startswith("timed out after 8 s")
    assert (killed["status"], killed["error"]) == ("failed", "killed by SIGKILL (out of memory?)")
    assert got["flaky", "rnn128-batch1"]["status"] == "ok"  # the next point ran
    # Generation one stream, at the rnn sizes only.
    assert "generation" in got["numpy", "rnn32-batch64"]
    assert "generation" not in got["numpy", "rnn128-batch1"]
    assert not any("generation_batch" in r for r in got.values())
    assert got["numpy", "rnn128-batch1"]["header"]["chars_per_batch"] == 8
    # The report, with every plot but the batch axis's (one batch size), the tables on stdout.
    batch_axis = {"throughput_vs_batch_size.png", "memory_vs_batch_size.png"}
    for name in SWEEP_FILES:
        assert (out / name).exists() == (name not in batch_axis), name
    assert "Fastest at each point:" in proc.stdout and "| numpy |" in unpad(proc.stdout)
    assert "**flaky** at rnn32-batch64: failed at train" in (out / "report.md").read_text()

    proc = subprocess.run([*cmd, "--resume", "--no-report"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "flaky at rnn16-batch64: already recorded" in proc.stderr
    assert [r["framework"] for r in framework_records(out)] == [name for name, _ in got]


# ---------------------------------------------------------------------------------------
# The report, on saved records
# ---------------------------------------------------------------------------------------


def test_sweep_table_has_a_row_per_framework_and_point(saved):
    runs, frameworks = report.load_records(saved)
    assert scaling.is_sweep(frameworks) and not scaling.is_sweep(
        report.load_records(Path(__file__).parent / "data" / "bench")[1])
    table = scaling.sweep_table(frameworks)
    raw = raw_records()
    assert len(table) == len(raw) == 15
    rows = {(r["framework"], r["point"]): r for r in table.to_dict("records")}
    for r in raw:
        row = rows[r["framework"], point_of(r).key]
        assert row["status"] == r["status"]
        if r["status"] == "ok":
            assert row["step_ms"] == pytest.approx(1000 * step_s(r))
            assert row["peak_mb"] == r["train_process"]["max_rss_mb"]
            header = r["header"]
            assert row["train_flops_per_step"] == 3 * header["flops_per_char"] * header[
                "chars_per_batch"]
    assert rows["flaky", "rnn16-batch64"]["status"] == "timeout"
    assert scaling.grid_of(runs) == Grid((16, 32, 64), (1, 8))


def test_fastest_at_each_point(saved):
    runs, frameworks = report.load_records(saved)
    fastest = scaling.fastest_rows(scaling.sweep_table(frameworks), scaling.grid_of(runs))
    expected = {}
    for r in raw_records():
        if r["status"] == "ok":
            key = (point_of(r).rnn_size, point_of(r).batch_size)
            expected.setdefault(key, []).append((step_s(r), r["framework"]))
    assert [(row["rnn_size"], row["batch_size"]) for row in fastest] == list(expected)
    for row in fastest:
        ranked = sorted(expected[row["rnn_size"], row["batch_size"]])
        assert row["fastest"] == ranked[0][1]
        assert row["step_ms"] == pytest.approx(1000 * ranked[0][0])
        assert row["runner_up"] == f"{ranked[1][1]} ({ranked[1][0] / ranked[0][0]:.2f}x)"
        assert ("fastest_gen" in row) == (row["batch_size"] == 64)  # the rnn-size axis


def test_scaling_exponent_is_the_log_log_slope():
    flops = [1e6, 4e6, 16e6]
    assert scaling.scaling_exponent(flops, [2 * f ** 0.5 for f in flops]) == pytest.approx(0.5)
    assert scaling.scaling_exponent(flops, [3e-9 * f for f in flops]) == pytest.approx(1.0)
    assert scaling.scaling_exponent([1e6, 1e6], [1.0, 2.0]) is None  # one size: no slope
    assert scaling.scaling_exponent([1e6, float("nan")], [1.0, 2.0]) is None


def test_exponents_on_saved_records(saved):
    runs, frameworks = report.load_records(saved)
    fits = scaling.exponents(scaling.sweep_table(frameworks), scaling.grid_of(runs))
    for name in ("numpy", "pytorch"):
        ok = [r for r in raw_records() if r["framework"] == name and r["status"] == "ok"
              and point_of(r).batch_size == 64]
        assert len(ok) == 3
        x = [np.log(3 * r["header"]["flops_per_char"] * r["header"]["chars_per_batch"])
             for r in ok]
        assert fits[name] == pytest.approx(np.polyfit(x, np.log([step_s(r) for r in ok]), 1)[0])
    assert fits["flaky"] is None  # timed out at 16, killed at 32: one rnn size left


def test_warmup_steps_counts_slow_steps_after_the_first():
    def steps(durations):
        return [[k + 1, float(np.cumsum(durations)[k]), 3.0] for k in range(len(durations))]
    assert scaling.warmup_steps(steps([2.0, 0.1, 0.1, 0.1, 0.1])) == 1
    assert scaling.warmup_steps(steps([2.0, 0.5, 0.3, 0.1, 0.1, 0.1])) == 3
    assert scaling.warmup_steps(steps([2.0, 0.1, 0.1])) is None  # too few to say
    assert scaling.warmup_steps([[5, 1.0, 3.0], [10, 2.0, 3.0], [15, 3.0, 3.0],
                                 [20, 4.0, 3.0]]) is None  # not every step logged


def test_sweep_report_writes_every_plot_and_table(saved, capsys):
    report.main([str(saved)])
    for name in SWEEP_FILES:
        assert (saved / name).exists(), name
        if name.endswith(".png"):
            assert (saved / name).read_bytes()[:8] == PNG_MAGIC
    out = unpad(capsys.readouterr().out)
    assert "| rnn size | batch size | fastest |" in out
    assert "| framework | exponent | ms/step H=16 | ms/step H=32 | ms/step H=64 |" in out
    assert "**flaky** at rnn16-batch64: timeout at train: `timed out after 10 s`" in out
    md = unpad((saved / "report.md").read_text())
    assert "![step time against rnn size](step_time_vs_rnn_size.png)" in md
    assert "Failed, timed out or skipped (the sweep went on):" in md
    assert "| numpy | numpy 2." in md and "| flaky | numpy 2." in md  # the versions table
    table, text, runs = report.build(saved)  # the same report through build
    assert unpad(text) == md and len(table) == 15


def test_sweep_reference_publishes_and_gets_its_section_of_the_results_page(saved, tmp_path,
                                                                          monkeypatch):
    root = tmp_path / "checkout"
    page = root / "docs" / "RESULTS.md"
    monkeypatch.setattr(report, "ROOT", root)
    monkeypatch.setattr(report, "REFERENCE_ROOT", root / "benchmarks" / "reference")
    monkeypatch.setattr(report, "RESULTS_PAGE", page)
    report.main([str(saved), "--reference"])
    published = root / "benchmarks" / "reference" / "amd-epyc-2core" / "custom"
    assert sorted(p.name for p in published.iterdir()) == SWEEP_FILES
    text = unpad(page.read_text())
    assert text.startswith("# Results\n") and "## amd-epyc-2core\n" in text
    link = "../benchmarks/reference/amd-epyc-2core/custom"
    assert f"]({link}/step_time_vs_rnn_size.png)" in text
    assert f"]({link}/throughput_vs_batch_size.png)" in text
    assert "| framework | exponent |" in text


def test_sweep_bf16_profile_compares_the_precisions_up_to_1024(corpus, saved):
    """The sweep-bf16 profile: its grid (rnn sizes to 1024 at batch 64), no generation at
    any point; its report's precision table pairs each bf16 row with its fp32 row."""
    profile = run_all.PROFILES["sweep-bf16"]
    assert profile.grid.points() == [Point(128, 64), Point(512, 64), Point(1024, 64)]
    plans = run_all.point_plans(run_all.make_plan(run_all.parse_args(
        ["--profile", "sweep-bf16", "--text-path", str(corpus), "--extra-train-args",
         "--seq-len 8"])))
    assert [p.key for _, p in plans] == ["rnn128-batch64", "rnn512-batch64", "rnn1024-batch64"]
    assert all(plan.generations == () for plan in plans.values())
    # The saved sweep's pytorch points again as pytorch[bf16], each step twice as fast.
    lines = [json.loads(line) for line in (saved / "records.jsonl").read_text().splitlines()]
    twins = []
    for r in lines:
        if r.get("framework") == "pytorch" and r.get("status") == "ok":
            twin = json.loads(json.dumps(r))
            twin.update(framework="pytorch[bf16]", precision="bf16-mixed",
                        peak_bf16_before={"peak_flops": 2e11}, peak_bf16_after={"peak_flops": 2e11})
            for epoch in twin["epochs"]:
                epoch["step_s_median"] /= 2
            twins.append(twin)
    (saved / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + twins))
    _, frameworks = report.load_records(saved)
    table = scaling.sweep_table(frameworks)
    text = unpad(scaling.precision_table(table, scaling.grid_of(report.load_records(saved)[0])))
    rows = text.splitlines()[2:]
    assert len(rows) == 3  # rnn sizes 16, 32 and 64; the batch sizes' points are left out
    assert all(r.startswith("| pytorch | ") and "| 2.00x |" in r for r in rows)
    assert scaling.precision_table(table[table["framework"] != "pytorch[bf16]"],
                                   scaling.grid_of([])) is None


def test_a_sweep_shows_only_the_plots_it_has_data_for(saved):
    """sweep-bf16's grid has one batch size and no generation: its report and its section
    of the results page show the step time and the MFU against rnn size, nothing empty."""
    _, frameworks = report.load_records(saved)
    table = scaling.sweep_table(frameworks)
    full = scaling.grid_of(report.load_records(saved)[0])
    assert scaling.shown_plots(table, full) == scaling.PLOTS
    one_batch = dataclasses.replace(full, batch_sizes=(64,))
    silent = table.assign(gen_chars_per_s=float("nan"))
    assert list(scaling.shown_plots(silent, one_batch)) == ["step", "mfu"]
    assert list(scaling.shown_plots(silent, full)) == ["step", "mfu", "batch", "memory"]
