"""The benchmark runner end to end, its --resume and Ctrl-C, and the report and plots on
saved records (tests/data/bench/records.jsonl: a real tiny run of numpy, pytorch and
chainer, two repeats each, a script that exits 1, and one that does not exist).

The runner and the report need pandas and matplotlib, which only the modern
environment has; under the legacy one this module is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks import plot, report, run_all  # noqa: E402
from common import logs  # noqa: E402
from benchmarks.mfu import mfu  # noqa: E402
from tests.conftest import ROOT, TEXT  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
TINY_MODEL = "--seq-len 16 --batch-size 4 --rnn-size 16 --embedding-size 8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def legacy_chainer() -> bool:
    return ((ROOT / ".venv-legacy" / "bin" / "python").exists()
            and (ROOT / "chainer_model.py").exists())


def runner(out: Path, corpus: Path, frameworks: str, *extra: str,
           **kwargs) -> subprocess.CompletedProcess:
    """`python benchmarks/run_all.py` with tiny flags: the command a user types."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--frameworks", frameworks,
           "--text-path", str(corpus), "--extra-train-args", TINY_MODEL, "--num-epochs", "2",
           "--max-steps", "0", "--gen-length", "100", "--matmul-size", "256", "--threads", "1",
           "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def framework_records(out: Path) -> list[dict]:
    lines = (out / "records.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "framework"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One real run: numpy (modern), chainer (legacy, if set up) and a script that exits 1."""
    tmp = tmp_path_factory.mktemp("bench")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    broken = tmp / "broken.py"
    broken.write_text('import sys\nsys.exit("error: deliberately broken")\n')
    names = "numpy,chainer" if legacy_chainer() else "numpy"
    out = tmp / "results"
    proc = runner(out, corpus, names, "--add-script", f"broken={broken}")
    return out, corpus, broken, names, proc


# ---------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------


def test_runner_records_every_framework_and_a_failure_is_not_fatal(bench):
    out, _, _, names, proc = bench
    assert proc.returncode == 0, proc.stderr
    records = {r["framework"]: r for r in framework_records(out)}
    assert list(records) == [*names.split(","), "broken"]

    broken = records["broken"]
    assert broken["status"] == "failed" and broken["stage"] == "train"
    assert broken["error"] == "error: deliberately broken"

    for name in names.split(","):
        r = records[name]
        assert r["status"] == "ok", r["error"]
        assert r["header"]["threads"] == 1
        assert r["header"]["model_config"]["rnn_size"] == 16
        assert [e["epoch"] for e in r["epochs"]] == [1, 2]
        assert r["epochs"][-1]["step"] == 2 * r["header"]["train_batches"]
        assert len(r["steps"]) == r["epochs"][-1]["step"]  # --log-every 1 on a tiny run
        assert r["train_process"]["max_rss_mb"] > 10  # a Python process, from wait4
        assert r["generation"]["chars"] == 100
        assert len(r["generation"]["text"]) > 100  # the seed, then 100 characters
        assert r["peak_flops"] > 0
    if "chainer" in records:  # same initial weights, same batches: the same losses
        a, b = records["numpy"]["epochs"][-1], records["chainer"]["epochs"][-1]
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)
        assert records["chainer"]["python"] == ".venv-legacy/bin/python"

    run = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert run["kind"] == "run" and run["settings"]["profile"] == "custom"
    assert run["machine"]["cores"] >= 1 and run["git"]["commit"]
    # run_all ends with the report
    for name in ("report.md", "results.csv", "results.json", "loss_per_epoch.png",
                 "loss_vs_time.png", "throughput.png"):
        assert (out / name).exists(), name
    assert "deliberately broken" in (out / "report.md").read_text()


def test_resume_does_not_redo_finished_frameworks(bench):
    out, corpus, broken, names, _ = bench
    before = framework_records(out)
    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("train.jsonl")}
    proc = runner(out, corpus, names, "--add-script", f"broken={broken}", "--resume",
                  "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "numpy: already recorded" in proc.stderr
    assert "broken: already recorded" in proc.stderr  # failed counts as finished
    assert framework_records(out) == before
    assert {p: p.stat().st_mtime_ns for p in logs} == logs

    # Other settings cannot be mixed into the same records.
    proc = runner(out, corpus, names, "--resume", "--gen-length", "7", "--no-report")
    assert proc.returncode != 0 and "gen_length" in proc.stderr
    assert framework_records(out) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_child_and_keeps_what_finished(tmp_path, sig):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    pid_file = tmp_path / "slow.pid"
    slow = tmp_path / "slow.py"
    slow.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                    "time.sleep(120)\n")
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--frameworks", "numpy",
           "--add-script", f"slow={slow}", "--text-path", str(corpus), "--extra-train-args",
           TINY_MODEL, "--num-epochs", "1", "--max-steps", "3", "--gen-length", "10",
           "--matmul-size", "128", "--threads", "1", "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    assert [(r["framework"], r["status"]) for r in framework_records(out)] == [("numpy", "ok")]
    with pytest.raises(ProcessLookupError):  # the child was stopped and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_missing_script_is_skipped_not_failed(tmp_path):
    target = run_all.script_target(f"later={tmp_path / 'later_model.py'}")
    assert target.skip_reason() == "later_model.py is not written yet"
    record = run_all.skipped_record(target, target.skip_reason())
    assert record["status"] == "skipped"
    assert run_all.done_runs([record]) == set()  # --resume tries it again


def test_parse_generated_line():
    err = ("using checkpoints/x\n"
           "generated 1024 characters in 0.512 s (2000.0 chars/s; first step 0.031 s)\n")
    assert run_all.parse_generated_line(err) == {
        "chars": 1024, "duration_s": 0.512, "chars_per_s": 2000.0, "first_step_s": 0.031}
    assert run_all.parse_generated_line("Traceback ...\nValueError: x\n") is None
    assert run_all.last_line("a\nerror: bad input\n\n") == "error: bad input"


def test_log_every_divides_the_epoch():
    assert run_all.choose_log_every(245, 32 * 245) == 49  # full: 160 points, epoch ends logged
    assert run_all.choose_log_every(245, 40) == 1
    assert run_all.choose_log_every(245, 1000) == 5  # gcd(245, 1000) = 5
    assert run_all.choose_log_every(7, 7) == 1


def test_quick_profile_is_the_default():
    args = run_all.build_parser().parse_args([])
    assert args.profile == "quick"
    quick = run_all.PROFILES["quick"]
    assert quick.num_epochs == 1 and quick.max_steps == run_all.QUICK_STEPS
    assert run_all.PROFILES["full"].num_epochs == 32 and run_all.PROFILES["full"].max_steps is None


# ---------------------------------------------------------------------------------------
# The report, on saved records
# ---------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    out = tmp_path / "saved"
    shutil.copytree(DATA / "bench", out)
    return out


def test_summarise_computes_each_measurement():
    record = {
        "framework": "x", "repeat": 0, "status": "ok", "peak_flops": 1e9,
        "header": {"versions": {"x": "1.0", "numpy": "2.0"}, "train_batches": 20,
                   "chars_per_batch": 100, "flops_per_char": 1000, "threads": 2},
        "epochs": [{"epoch": 1, "step": 20, "duration_s": 4.0, "step_s_median": 0.2,
                    "first_step_s": 1.0, "train/loss": 2.0, "val/loss": 1.5},
                   {"epoch": 2, "step": 30, "duration_s": 2.0, "step_s_median": 0.2,
                    "first_step_s": 0.2, "train/loss": 1.0, "val/loss": 1.25}],
        "train_process": {"max_rss_mb": 300.0, "wall_s": 9.0},
        "generation": {"chars_per_s": 500.0, "first_step_s": 0.1},
    }
    row = report.summarise(record)
    assert row["version"] == "1.0" and row["versions"] == "x 1.0, numpy 2.0"
    assert row["duration_s"] == 6.0 and row["epochs"] == 1.5 and row["s_per_epoch"] == 4.0
    assert row["chars_per_s"] == pytest.approx(30 * 100 / 6.0)
    assert row["step_ms"] == pytest.approx(200.0) and row["first_step_s"] == 1.0
    # 3 x 1000 FLOPs x 100 characters per 0.2 s step, over 1 GFLOP/s
    assert row["mfu"] == pytest.approx(3 * 1000 * 100 / 0.2 / 1e9)
    assert row["mfu"] == mfu(1000, 100, 0.2, 1e9)
    assert row["train_loss"] == 1.0 and row["val_loss"] == 1.25
    assert row["val_bpc"] == pytest.approx(1.25 / 0.6931471805599453)
    assert row["peak_mb"] == 300.0 and row["gen_chars_per_s"] == 500.0


def test_report_on_saved_records(saved, capsys):
    readme = saved / "README.md"
    readme.write_text("# project\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n")
    report.main([str(saved), "--compare-original", "--update-readme", "--readme", str(readme)])
    printed = capsys.readouterr().out

    table = pd.read_csv(saved / "results.csv")
    assert list(table["framework"]) == ["numpy", "pytorch", "chainer", "broken", "missing"]
    by = table.set_index("framework")
    assert list(by["status"]) == ["ok", "ok", "ok", "failed", "skipped"]
    assert by.loc["broken", "error"] == "error: deliberately broken"
    assert by.loc["numpy", "repeats"] == 2
    # Medians over the two repeats, from the raw records.
    raw = [r for r in map(json.loads, (saved / "records.jsonl").read_text().splitlines())
           if r.get("framework") == "numpy"]
    rates = sorted(r["generation"]["chars_per_s"] for r in raw)
    assert by.loc["numpy", "gen_chars_per_s"] == pytest.approx(sum(rates) / 2)
    # Same weights, same batches: every framework ends at the same loss.
    assert by.loc["pytorch", "train_loss"] == pytest.approx(by.loc["numpy", "train_loss"],
                                                            abs=1e-4)

    md = (saved / "report.md").read_text()
    assert "| framework | version | duration | s/epoch | chars/s | step ms |" in md
    assert "| numpy | 2.4.6 |" in md and "| chainer | 7.8.1 |" in md
    assert "**missing**: skipped" in md and "deliberately broken" in md
    assert "AMD EPYC" in md and "float32 matmul peak" in md and "1-minute load average" in md
    assert "## Generated text" in md and "### pytorch" in md
    assert "## Beside the original suite" in md and "1:37:48" in md  # pytorch's 5868 s
    assert "1:37:48" in printed and "| numpy |" in printed

    data = json.loads((saved / "results.json").read_text())
    assert [f["framework"] for f in data["frameworks"]][:3] == ["numpy", "pytorch", "chainer"]
    for name in ("loss_per_epoch.png", "loss_vs_time.png", "throughput.png"):
        assert (saved / name).read_bytes()[:8] == PNG_MAGIC

    text = readme.read_text()
    assert text.startswith("# project\n\n<!-- results:start -->\nProfile `custom`")
    assert "old" not in text and text.endswith("<!-- results:end -->\n\nafter\n")
    assert "](saved/report.md)" not in text and "](report.md)" in text
    assert "| numpy | 2.4.6 |" in text


def test_update_readme_skips_without_markers(saved, capsys):
    readme = saved / "README.md"
    readme.write_text("# no markers\n")
    report.main([str(saved), "--update-readme", "--readme", str(readme)])
    assert readme.read_text() == "# no markers\n"
    assert "markers" in capsys.readouterr().err


def test_report_without_records_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no records"):
        report.main([str(tmp_path)])


# ---------------------------------------------------------------------------------------
# Plots of training logs
# ---------------------------------------------------------------------------------------


def test_plot_command_writes_a_png_from_log_paths(tmp_path):
    log = tmp_path / "chainer_model.log"  # the .log path stands for its .jsonl twin
    shutil.copy(DATA / "chainer_model.jsonl", log.with_suffix(".jsonl"))
    output = tmp_path / "loss.png"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.plot", str(log),
                           str(DATA / "chainer_model.jsonl"), "--output", str(output)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert output.read_bytes()[:8] == PNG_MAGIC


def test_read_training_log_keeps_the_last_run_and_times_steps(tmp_path):
    lines = (DATA / "chainer_model.jsonl").read_text()
    log = tmp_path / "twice.jsonl"
    log.write_text(lines + lines)  # a second run appended to the same log
    header, epochs, steps = logs.read_training_log(log)
    _, once_epochs, once_steps = logs.read_training_log(DATA / "chainer_model.jsonl")
    assert epochs == once_epochs and steps == once_steps
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    elapsed = [s[1] for s in steps]
    assert elapsed == sorted(elapsed)
    # The last step of each epoch ends exactly at the sum of the durations so far.
    assert elapsed[-1] == pytest.approx(sum(e["duration_s"] for e in epochs), abs=1e-3)
    curve = plot.curve_from_log(log)
    assert curve.name == "chainer" and curve.epoch_points()[-1][0] == 3.0


def test_plot_refuses_a_missing_log(tmp_path):
    with pytest.raises(SystemExit, match="no training records"):
        plot.curve_from_log(tmp_path / "nothing.log")
