"""The benchmark runner end to end, its --resume and Ctrl-C, and the report and plots on
saved records (tests/data/bench/records.jsonl: a real tiny run of numpy, pytorch and
chainer, two repeats each, a script that exits 1, and one whose environment is missing).

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

from common import logs, registry
from common.paths import ROOT, venv_python
from tests.conftest import TEXT

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks import child, plot, records, report, run_all  # noqa: E402
from benchmarks.mfu import mfu  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
TINY_MODEL = "--seq-len 16 --batch-size 4 --rnn-size 16 --embedding-size 8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# `python -m benchmarks.run_all` with extra frameworks registered first: scripts outside
# the registry and the checkout (one that fails, one that hangs), given as a JSON
# {name: path} in argv[1]. They run in the "any" environment (the modern venv).
WITH_SCRIPTS = """
import dataclasses, json, sys
from pathlib import Path
from benchmarks import run_all
from common import registry

@dataclasses.dataclass(frozen=True)
class Script(registry.Entry):
    path: str = ""

    @property
    def script(self):
        return Path(self.path)

for name, path in json.loads(sys.argv[1]).items():
    registry.FRAMEWORKS[name] = Script(name, Path(path).stem, "any", "sys", path=path)
sys.exit(run_all.main(sys.argv[2:]))
"""


def legacy_chainer() -> bool:
    return venv_python("legacy").exists() and registry.FRAMEWORKS["chainer"].script.exists()


def run_all_command(scripts: dict[str, Path] | None = None) -> list[str]:
    """The command a user types, or (with `scripts`) the same main with those registered."""
    if not scripts:
        return [sys.executable, "-m", "benchmarks.run_all"]
    return [sys.executable, "-c", WITH_SCRIPTS, json.dumps({k: str(v) for k, v in
                                                            scripts.items()})]


def runner(out: Path, corpus: Path, frameworks: str, *extra: str,
           scripts: dict[str, Path] | None = None) -> subprocess.CompletedProcess:
    """run_all with tiny flags."""
    cmd = [*run_all_command(scripts), "--frameworks", frameworks, "--text-path", str(corpus),
           "--extra-train-args", TINY_MODEL, "--num-epochs", "2", "--max-steps", "0",
           "--gen-length", "100", "--matmul-size", "256", "--threads", "1", "--out", str(out),
           *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


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
    proc = runner(out, corpus, names + ",broken", scripts={"broken": broken})
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
    # run_all ends with the report, its table on stdout
    for name in ("report.md", "results.csv", "loss_per_epoch.png", "loss_vs_time.png",
                 "throughput.png"):
        assert (out / name).exists(), name
    assert "deliberately broken" in (out / "report.md").read_text()
    assert "| framework | version |" in proc.stdout and "| numpy |" in proc.stdout


def test_records_name_no_directory_of_the_machine(bench):
    """Records get committed (the reference results): paths inside the checkout are
    relative, paths outside it (here all of the temporary directory) are file names."""
    out, corpus, broken, _, _ = bench
    text = (out / "records.jsonl").read_text()
    assert str(out) not in text and str(corpus.parent) not in text and str(ROOT) not in text
    assert "hostname" not in text
    run = json.loads(text.splitlines()[0])
    assert run["settings"]["text_path"] == "corpus.txt"
    numpy = next(r for r in framework_records(out) if r["framework"] == "numpy")
    assert numpy["script"] == "numpy_model.py" and numpy["python"] == ".venv/bin/python"
    assert numpy["train_command"].startswith(".venv/bin/python numpy_model.py train "
                                             "--text-path corpus.txt --init-from init.safetensors")


def test_resume_does_not_redo_finished_frameworks(bench):
    out, corpus, broken, names, _ = bench
    before = framework_records(out)
    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("train.jsonl")}
    proc = runner(out, corpus, names + ",broken", "--resume", "--no-report",
                  scripts={"broken": broken})
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
    cmd = [*run_all_command({"slow": slow}), "--frameworks", "numpy,slow",
           "--text-path", str(corpus), "--extra-train-args",
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


def test_missing_environment_is_skipped_not_failed():
    entry = registry.Entry("later", "numpy_model", "any", "no_such_module_for_later")
    reason = child.skip_reason(entry)
    assert reason == "no_such_module_for_later is not installed in .venv"
    record = records.skipped_record(entry.name, entry.env, entry.script,
                                    child.interpreter(entry.env), reason)
    assert record["status"] == "skipped" and record["script"] == "numpy_model.py"
    assert records.done_runs([record]) == set()  # --resume tries it again


def test_dry_run_prints_each_framework_s_commands(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cmd = [*run_all_command(), "--frameworks", "numpy,keras[jax]", "--text-path", str(corpus),
           "--extra-train-args", TINY_MODEL, "--max-steps", "5", "--out", str(tmp_path / "out"),
           "--dry-run"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out").exists()
    lines = proc.stdout.splitlines()
    assert lines[0] == "# numpy" and lines[3] == "# keras[jax]"
    assert "numpy_model.py train " in lines[1] and "--max-steps 5" in lines[1]
    assert "keras_model.py generate " in lines[5] and "runs/keras-jax/0/checkpoint" in lines[5]


def test_unknown_framework_is_one_line():
    with pytest.raises(SystemExit, match="unknown nope; known: numpy"):
        run_all.select_entries("numpy,nope")
    assert [e.name for e in run_all.select_entries(None)] == list(registry.FRAMEWORKS)


def test_portable_paths_and_machine_slug():
    assert records.portable(ROOT / "benchmarks" / "results") == "benchmarks/results"
    assert records.portable("/somewhere/else/tinyshakespeare.txt") == "tinyshakespeare.txt"
    assert records.portable("--threads") == "--threads"
    assert records.machine_slug({"cpu": "AMD EPYC", "cores": 2}) == "amd-epyc-2core"
    assert records.machine_slug({"cpu": "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz",
                                 "cores": 16}) == "intel-xeon-e5-2686-v4-16core"
    assert records.machine_slug({"cpu": None, "cores": None}) == "unknown-0core"


def test_parse_generated_line():
    err = ("using checkpoints/x\n"
           "generated 1024 characters in 0.512 s (2000.0 chars/s; first step 0.031 s)\n")
    assert child.parse_generated_line(err) == {
        "chars": 1024, "duration_s": 0.512, "chars_per_s": 2000.0, "first_step_s": 0.031}
    assert child.parse_generated_line("Traceback ...\nValueError: x\n") is None
    assert child.last_line("a\nerror: bad input\n\n") == "error: bad input"


def test_log_every_divides_the_epoch():
    assert run_all.choose_log_every(245, 32 * 245) == 49  # full: 160 points, epoch ends logged
    assert run_all.choose_log_every(245, 40) == 1
    assert run_all.choose_log_every(245, 1000) == 5  # gcd(245, 1000) = 5
    assert run_all.choose_log_every(7, 7) == 1


def test_quick_profile_is_the_default():
    args = run_all.build_parser().parse_args([])
    assert args.profile == "quick"
    quick = run_all.PROFILES["quick"]
    assert quick.num_epochs == 1 and quick.max_steps is None  # one whole epoch
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
    report.main([str(saved), "--compare-original"])
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

    for name in ("loss_per_epoch.png", "loss_vs_time.png", "throughput.png"):
        assert (saved / name).read_bytes()[:8] == PNG_MAGIC


def test_reference_publishes_the_records_and_updates_the_readme(saved, tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    root.mkdir()
    readme = root / "README.md"
    readme.write_text("# project\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n")
    monkeypatch.setattr(report, "ROOT", root)
    monkeypatch.setattr(report, "REFERENCE_ROOT", root / "benchmarks" / "reference")
    report.main([str(saved), "--reference"])

    # The committed set: the records, the report and the plots; nothing else of a run.
    published = root / "benchmarks" / "reference" / "amd-epyc-2core" / "custom"
    assert sorted(p.name for p in published.iterdir()) == [
        "loss_per_epoch.png", "loss_vs_time.png", "records.jsonl", "report.md", "results.csv",
        "throughput.png"]
    assert (published / "records.jsonl").read_text() == (saved / "records.jsonl").read_text()

    text = readme.read_text()
    assert text.startswith("# project\n\n<!-- results:start -->\nProfile `custom`")
    assert "old" not in text and text.endswith("<!-- results:end -->\n\nafter\n")
    link = "benchmarks/reference/amd-epyc-2core/custom"
    assert f"]({link}/report.md)" in text and f"]({link}/throughput.png)" in text
    assert "| numpy | 2.4.6 |" in text

    # Again from the published directory itself: the same files, the README rewritten.
    report.main([str(published), "--reference"])
    assert len(list(published.iterdir())) == 6 and readme.read_text() == text


def test_update_readme_skips_without_markers(saved, capsys):
    readme = saved / "README.md"
    readme.write_text("# no markers\n")
    table, _, runs = report.build(saved)
    assert not report.update_readme(readme, report.readme_block(table, runs[-1], saved, readme))
    assert readme.read_text() == "# no markers\n"
    assert "markers" in capsys.readouterr().err


def test_committed_reference_renders_and_names_no_machine_directory(tmp_path):
    """The reference results the README shows: only the committed set, portable records,
    and the report still renders from them."""
    dirs = [p.parent for p in (ROOT / "benchmarks" / "reference").glob("*/*/records.jsonl")]
    assert dirs, "no reference results committed"
    for ref in dirs:
        assert sorted(p.name for p in ref.iterdir()) == [
            "loss_per_epoch.png", "loss_vs_time.png", "records.jsonl", "report.md",
            "results.csv", "throughput.png"]
        text = (ref / "records.jsonl").read_text()
        assert "hostname" not in text and '"/' not in text and str(ROOT) not in text
        run = json.loads(text.splitlines()[0])
        assert ref.parent.name == records.machine_slug(run["machine"])
        copy = tmp_path / ref.parent.name
        copy.mkdir()
        shutil.copy(ref / "records.jsonl", copy)
        table, _, _ = report.build(copy)
        assert (table["status"] == "ok").any()


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
