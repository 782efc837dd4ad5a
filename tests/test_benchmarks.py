"""The benchmark runner end to end, its --resume and Ctrl-C, and the report and plots on
saved records:

- tests/data/bench/records.jsonl: a real tiny run of numpy, pytorch and chainer, two
  repeats each, a script that exits 1, and one whose environment is missing, written
  before the records carried the step-time distribution, the peaks before and after
  each run and the batch generation (the report shows those as blanks);
- tests/data/bench/loaded/records.jsonl: a real tiny run of numpy and pytorch, two
  repeats each, on a loaded machine (1-minute load average 11 to 14 on 2 cores),
  with every current field; edited to make the flags certain: the peaks set to round
  values (pytorch's second run 40 -> 28 GFLOP/s, 43% apart; the others under 4%),
  and numpy's second run given 2 stalls (a 200 ms step). Its pytorch second run
  timed its sampler (`; sampler S s`), the first did not.

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

from charrnn.common import logs, registry
from charrnn.common.cli import parse_args
from charrnn.common.paths import ROOT, venv_python
from tests.conftest import TEXT
from tests.markdown import unpad

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks import child, onnx_row, plot, records, report, rows, run_all  # noqa: E402
from benchmarks.mfu import mfu  # noqa: E402
from benchmarks.rows import Row  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
TINY_MODEL = "--seq-len 16 --batch-size 4 --rnn-size 16 --embedding-size 8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What the report of a sweep writes beside its records (benchmarks.sweep_report).
SWEEP_FILES = ["generation_vs_rnn_size.png", "memory_vs_batch_size.png", "mfu_vs_rnn_size.png",
               "records.jsonl", "report.md", "step_time_vs_rnn_size.png", "sweep.csv",
               "throughput_vs_batch_size.png"]

# `python -m benchmarks.run_all` with extra frameworks registered first: scripts outside
# the registry and the checkout (one that fails, one that hangs), given as a JSON
# {name: path} in argv[1]. They run in the "any" environment (the modern venv).
WITH_SCRIPTS = """
import dataclasses, json, sys
from pathlib import Path
from benchmarks import run_all
from charrnn.common import registry

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
        batch = r["generation_batch"]  # generate --num-samples 64: every stream counted
        assert batch["num_samples"] == 64 and batch["total_chars"] == 64 * 100
        assert batch["total_chars_per_s"] > 0 and "--num-samples 64" in r["generate_batch_command"]
        assert r["peak_before"]["peak_flops"] > 0 and r["peak_after"]["peak_flops"] > 0
        assert r["peak_before"]["size"] == 256
        assert {"step_s_p90", "step_s_p99", "step_s_max", "stalls"} <= set(r["epochs"][0])
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
    assert "| framework | version |" in unpad(proc.stdout) and "| numpy |" in unpad(proc.stdout)


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
    assert numpy["train_command"].startswith(".venv/bin/python numpy_model.py train ")
    assert "--text-path corpus.txt" in numpy["train_command"]
    assert "--init-from init.safetensors" in numpy["train_command"]


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


def test_cells_run_each_cell_from_its_own_weights(tmp_path):
    """--cells: a run per framework and cell, each cell from its own initial weights, the cell
    a column of the report; --resume skips what is recorded; bad lists are one line."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "results"
    proc = runner(out, corpus, "numpy", "--cells", "gru,rnn", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    found = {r["cell"]: r for r in framework_records(out)}
    assert list(found) == ["gru", "rnn"]
    for cell, r in found.items():
        assert r["status"] == "ok", r["error"]
        assert r["header"]["model_config"]["cell"] == cell
        assert f"--init-from init-{cell}.safetensors" in r["train_command"]
        assert f" --cell {cell} " in r["train_command"]
    assert (out / "runs" / "numpy" / "gru" / "0").is_dir()
    table = report.summary_table(report.load_records(out)[1])
    assert sorted(table["cell"]) == ["gru", "rnn"]
    assert "| framework | cell | version |" in unpad((out / "report.md").read_text())
    assert "| numpy | gru |" in unpad(proc.stdout)
    cells = unpad(report.cells_table(table))
    assert cells.splitlines()[0] == ("| framework | gru step ms | rnn step ms | gru val loss "
                                     "| rnn val loss |")
    assert cells.splitlines()[2].startswith("| numpy | ")
    assert "## Cells" in (out / "report.md").read_text()
    resumed = runner(out, corpus, "numpy", "--cells", "gru,rnn", "--resume", "--no-report")
    assert resumed.returncode == 0 and "numpy (gru): already recorded" in resumed.stderr
    for bad, says in ((["--cells", "lstm,tree"], "--cells"),
                      (["--extra-train-args", "--cell gru"], "--cells"),
                      (["--extra-train-args", "--num-epochs 3"], "--num-epochs"),
                      (["--extra-train-args", "--rnn-size 0"], "--rnn-size"),
                      (["--profile", "sweep", "--cells", "lstm,gru"], "one cell")):
        proc = subprocess.run([*run_all_command(), *bad, "--text-path", str(corpus),
                               "--dry-run"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and says in proc.stderr, (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_cells_profile_trains_every_cell(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 5, encoding="utf-8")  # one batch of the default 64 x 64
    proc = subprocess.run([*run_all_command(), "--profile", "cells", "--frameworks",
                           "numpy,pytorch", "--text-path", str(corpus), "--dry-run"],
                          cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    headers = [line for line in proc.stdout.splitlines() if line.startswith("# ")]
    assert headers == [f"# {name} ({cell})" for cell in ("lstm", "gru", "rnn")
                       for name in ("numpy", "pytorch")]


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


def test_a_failure_names_no_directory_of_the_checkout():
    """A child's error line with a path of the checkout is recorded relative to it."""
    record = records.framework_record("x", 0, "any", ROOT / "x_model.py", sys.executable)
    finished = child.Finished(returncode=1, wall_s=1.0, max_rss_mb=None)
    records.record_failure(record, "train", finished,
                           f"error: cannot write {ROOT}/benchmarks/results/x/checkpoint", None,
                           "")
    assert record["error"] == "error: cannot write benchmarks/results/x/checkpoint"


def test_missing_environment_is_skipped_not_failed():
    entry = registry.Entry("later", "numpy_model", "any", "no_such_module_for_later")
    reason = child.skip_reason(entry)
    assert reason == "no_such_module_for_later is not installed in .venv"
    record = records.skipped_record(entry.name, entry.env, entry.script,
                                    entry.python(), reason)
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
    assert lines[0] == "# numpy" and lines[4] == "# keras[jax]"
    assert "numpy_model.py train " in lines[1] and "--max-steps 5" in lines[1]
    assert "keras_model.py generate " in lines[6] and "runs/keras-jax/0/checkpoint" in lines[6]
    assert "--num-samples 64" in lines[7] and "--num-samples" not in lines[6]


def test_unknown_framework_is_one_line():
    with pytest.raises(SystemExit, match="unknown nope; known: numpy"):
        run_all.select_entries("numpy,nope")
    with pytest.raises(SystemExit, match="pytensor has no bf16-mixed path"):
        run_all.select_entries("pytensor[bf16]")
    with pytest.raises(SystemExit, match="named twice"):
        run_all.select_entries("keras[jax,bf16],keras[jax,bf16]")


def test_portable_paths_and_machine_slug():
    assert records.portable(ROOT / "benchmarks" / "results") == "benchmarks/results"
    assert records.portable("/somewhere/else/tinyshakespeare.txt") == "tinyshakespeare.txt"
    assert records.portable("--threads") == "--threads"
    assert records.machine_slug({"cpu": "AMD EPYC", "cores": 2}) == "amd-epyc-2core"
    assert records.machine_slug({"cpu": "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz",
                                 "cores": 16}) == "intel-xeon-e5-2686-v4-16core"
    assert records.machine_slug({"cpu": None, "cores": None}) == "unknown-0core"
    # Since the ISA extensions are recorded, the kind names its best tier.
    amx = {"cpu": "Intel(R) Xeon(R) Platinum 8488C", "cores": 2,
           "isa": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    assert records.machine_slug(amx) == "intel-xeon-platinum-8488c-amx-2core"
    assert records.machine_slug({**amx, "isa": ["avx2"]}) == "intel-xeon-platinum-8488c-avx2-2core"
    assert records.machine_slug({**amx, "isa": []}) == "intel-xeon-platinum-8488c-base-2core"
    assert set(records.machine_info()["isa"]) <= set(records.ISA_FLAGS)


def test_parse_generated_line_with_and_without_the_sampler():
    err = ("using checkpoints/x\n"
           "generated 1024 characters in 0.512 s (2000.0 chars/s; first step 0.031 s)\n")
    assert child.parse_generated_line(err) == child.Generated(1024, 0.512, 2000.0, 0.031, None)
    newer = "generated 1024 characters in 0.2 s (5000 chars/s; first step 0.01 s; sampler 0.05 s)"
    assert child.parse_generated_line(newer) == child.Generated(1024, 0.2, 5000.0, 0.01, 0.05)
    assert child.parse_generated_line("Traceback ...\nValueError: x\n") is None
    assert child.last_line("a\nerror: bad input\n\n") == "error: bad input"


def tiny_settings(tmp_path: Path, *flags: str):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    return run_all.resolve_settings(run_all.parse_args(
        ["--text-path", str(corpus), "--extra-train-args", TINY_MODEL, *flags]))


def test_batch_generation_counts_every_stream(tmp_path):
    # run_generate's N counts all streams (length x num_samples): taken as it is ...
    assert child.batch_chars(64 * 50, 64, 50) == 3200
    # ... and a line that counts one stream is scaled up to all of them.
    assert child.batch_chars(50, 64, 50) == 3200
    assert child.batch_chars(50, 1, 50) == 50
    line = ("generated 3200 characters in 0.16 s (20000.0 chars/s; first step 0.05 s; "
            "sampler 0.04 s)")
    timing = child.parse_generated_line(line)
    assert child.batch_chars(timing.chars, 64, 50) / timing.duration_s == pytest.approx(20000)
    plan = child.Plan(tiny_settings(tmp_path, "--gen-length", "50"), Path("out"), None, False)
    numpy = Row(registry.FRAMEWORKS["numpy"])
    cmd = child.generate_command(numpy, plan, Path("run"), 64)
    cmd = cmd[cmd.index("generate"):]
    assert parse_args(cmd, "test")[1].num_samples == 64 and "--length" in cmd
    assert "--num-samples" not in child.generate_command(numpy, plan, Path("run"))


def test_repeats_take_turns_round_robin(capsys):
    entries = [registry.Entry(name, "numpy_model", "any", "numpy") for name in "abc"]
    todo = run_all.pending(entries, 3, [])
    assert [(job.row.name, job.repeat) for job in todo] == [
        ("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2),
        ("c", 2)]
    done = [{"kind": "framework", "framework": "a", "repeat": 0, "status": "ok"},
            {"kind": "framework", "framework": "b", "repeat": 0, "status": "failed"}]
    todo = run_all.pending(entries, 2, done)  # --resume: the rest, in the same turns
    assert [(job.row.name, job.repeat) for job in todo] == [
        ("c", 0), ("a", 1), ("b", 1), ("c", 1)]
    assert "a (repeat 1): already recorded" in capsys.readouterr().err


def test_time_left_estimate(tmp_path):
    epochs = [{"epoch": 1, "step": 10, "duration_s": 8.0, "val_duration_s": 2.0},
              {"epoch": 2, "step": 20, "duration_s": 9.0, "val_duration_s": 1.0}]
    # Nothing finished before: the current run's 20 steps more at 1 s a step, and the later
    # run as long as this one will take (elapsed 25 s + 20 s left).
    assert run_all.estimate_left_s(epochs, 40, 25.0, ["b"], {}) == pytest.approx(20 + 45)
    # A later run of a framework that ran before takes as long as its last run; one not
    # seen yet the median of all finished runs (100, 120, 30: 100).
    past = {"a": [100.0, 120.0], "b": [30.0]}
    assert run_all.estimate_left_s(epochs, 40, 25.0, ["a", "c"], past) == pytest.approx(
        20 + 120 + 100)
    # The current framework's last run took 70 s: 45 s more (its generation, its peaks).
    assert run_all.estimate_left_s(epochs, 40, 25.0, [], {"a": [70.0]}, "a") == 45.0
    # Between runs: only the later ones.
    assert run_all.estimate_left_s([], 40, 0.0, ["b", "b"], past) == 60.0
    assert run_all.estimate_left_s([], 40, 0.0, ["b"], {}) is None
    assert [run_all.format_left(x) for x in (None, 0.2, 45, 41 * 60 + 10, 3 * 3600)] == [
        "time left unknown", "~1 s left", "~45 s left", "~41 min left", "~3.0 h left"]
    settings = tiny_settings(tmp_path, "--num-epochs", "32", "--max-steps", "0")
    assert run_all.progress_line("[3/10] jax", epochs, settings, 41 * 60) == (
        "[3/10] jax: epoch 2/32, ~41 min left")
    finished = [{"kind": "framework", "framework": "a", "status": "ok",
                 "started": "2026-11-23T12:00:00+00:00", "finished": "2026-11-23T12:01:40+00:00"},
                {"kind": "framework", "framework": "m", "status": "skipped",
                 "started": "2026-11-23T12:00:00+00:00", "finished": "2026-11-23T12:00:00+00:00"}]
    assert run_all.past_run_seconds(finished) == {"a": [100.0]}


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
        "framework": "x", "repeat": 0, "status": "ok",
        "peak_before": {"peak_flops": 1.1e9}, "peak_after": {"peak_flops": 0.9e9},
        "loadavg_start": [1.5, 1.0, 1.0], "loadavg_end": [0.5, 1.0, 1.0],
        "header": {"versions": {"x": "1.0", "numpy": "2.0"}, "train_batches": 20,
                   "chars_per_batch": 100, "flops_per_char": 1000, "threads": 2},
        "epochs": [{"epoch": 1, "step": 20, "duration_s": 5.0, "step_s_median": 0.2,
                    "step_s_p90": 0.3, "step_s_p99": 0.5, "step_s_max": 1.5, "stalls": 1,
                    "first_step_s": 1.0, "train/loss": 2.0, "val/loss": 1.5},
                   {"epoch": 2, "step": 30, "duration_s": 1.0, "step_s_median": 0.1,
                    "step_s_p90": 0.4, "step_s_p99": 0.45, "step_s_max": 0.5, "stalls": 0,
                    "first_step_s": 0.2, "train/loss": 1.0, "val/loss": 1.25},
                   {"epoch": 3, "step": 40, "duration_s": 2.0, "step_s_median": 0.2,
                    "step_s_p90": 0.2, "step_s_p99": 0.2, "step_s_max": 0.2, "stalls": 2,
                    "first_step_s": 0.2, "train/loss": 1.0, "val/loss": 1.25}],
        "train_process": {"max_rss_mb": 300.0, "wall_s": 9.0},
        "generation": {"chars": 1000, "duration_s": 2.0, "chars_per_s": 500.0,
                       "first_step_s": 0.1, "sampler_s": 0.5},
        "generation_batch": {"chars": 64000, "duration_s": 4.0, "first_step_s": 0.2,
                             "num_samples": 64, "total_chars": 64000,
                             "total_chars_per_s": 16000.0},
    }
    row = report.summarise(record)
    assert row["version"] == "1.0" and row["versions"] == "x 1.0, numpy 2.0"
    # The clock: 8 s of training over 2 epochs; the median: 0.2 s x 20 batches.
    assert row["duration_s"] == 8.0 and row["epochs"] == 2.0
    assert row["wall_s_per_epoch"] == 4.0 and row["s_per_epoch"] == pytest.approx(4.0)
    assert row["chars_per_s"] == pytest.approx(100 / 0.2)
    assert row["wall_chars_per_s"] == pytest.approx(40 * 100 / 8.0)
    # The step distribution: median of the epochs' medians, the worst epoch's tails, all
    # stalls.
    assert row["step_ms"] == pytest.approx(200.0) and row["first_step_s"] == 1.0
    assert row["step_p90_ms"] == pytest.approx(400.0) and row["step_p99_ms"] == 500.0
    assert row["step_max_ms"] == 1500.0 and row["stalls"] == 3
    # MFU against the mean of the run's two peaks (1 GFLOP/s), which are 22% apart:
    # 3 x 1000 FLOPs x 100 characters per 0.2 s step.
    assert row["peak_flops"] == pytest.approx(1e9)
    assert row["peak_diff"] == pytest.approx(1.1 / 0.9 - 1)
    assert row["mfu"] == pytest.approx(3 * 1000 * 100 / 0.2 / 1e9)
    assert row["mfu"] == mfu(1000, 100, 0.2, row["peak_flops"])
    assert row["train_loss"] == 1.0 and row["val_loss"] == 1.25
    assert row["val_bpc"] == pytest.approx(1.25 / 0.6931471805599453)
    assert row["peak_mb"] == 300.0 and (row["load_min"], row["load_max"]) == (0.5, 1.5)
    # Generation: the sampler's quarter of the time, the rate without it, the batch.
    assert row["gen_chars_per_s"] == 500.0 and row["gen_sampler_share"] == 0.25
    assert row["gen_model_chars_per_s"] == pytest.approx(1000 / 1.5)
    assert row["batch_gen_chars_per_s"] == 16000.0 and row["batch_gen_samples"] == 64


def test_older_records_give_blanks_not_errors():
    """A record written before the step distribution, the two peaks and the sampler."""
    record = {"framework": "x", "status": "ok", "peak_flops": 2e9,
              "header": {"train_batches": 10, "chars_per_batch": 100, "flops_per_char": 1000},
              "epochs": [{"epoch": 1, "step": 10, "duration_s": 1.0, "step_s_median": 0.1}],
              "generation": {"chars": 100, "duration_s": 1.0, "chars_per_s": 100.0,
                             "first_step_s": 0.1}}
    row = report.summarise(record)
    assert row["mfu"] == mfu(1000, 100, 0.1, 2e9)  # the run's one peak
    for key in ("step_p90_ms", "step_max_ms", "stalls", "peak_diff", "gen_sampler_s",
                "gen_model_chars_per_s", "batch_gen_chars_per_s", "load_min"):
        assert row[key] is None, key
    assert report.flags(row) == ""


def test_peak_flag_above_ten_percent():
    assert report.flags({"peak_diff": 0.10}) == ""  # 10% is still the same machine
    assert report.flags({"peak_diff": 0.104, "stalls": 0}) == "peaks 10% apart¹"
    assert report.flags({"peak_diff": float("nan"), "stalls": float("nan")}) == ""
    assert report.flags({"peak_diff": 0.5, "stalls": 1.0}) == "peaks 50% apart¹, 1 stall²"
    record = {"peak_before": {"peak_flops": 40e9}, "peak_after": {"peak_flops": 36e9}}
    assert report.peaks(record)["peak_diff"] == pytest.approx(40 / 36 - 1)  # 11%
    assert report.flags(report.peaks(record)) == "peaks 11% apart¹"
    failed = {"peak_before": {"peak_flops": None, "error": "x"}, "peak_after": {"peak_flops": 1}}
    assert report.peaks(failed) == {"peak_before_flops": None, "peak_after_flops": 1,
                                    "peak_flops": 1, "peak_bf16_flops": None,
                                    "peak_diff": None}

def test_report_on_saved_records(saved, capsys):
    report.main([str(saved), "--compare-original"])
    printed = unpad(capsys.readouterr().out)

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

    md = unpad((saved / "report.md").read_text())
    assert "| framework | version | s/epoch | wall s/epoch | chars/s | step ms |" in md
    assert "| numpy | 2.4.6 |" in md and "| chainer | 7.8.1 |" in md
    # Records older than the step distribution and the per-run peaks: blanks, no flags.
    assert "| numpy | 2 | 1.7 (1.7–1.8) | – | – | – | – | – | – | – | 5.2–6.5 |" in md
    assert "7.1 GFLOP/s, measured once at the start" in md and "¹" not in md
    assert "**missing**: skipped" in md and "deliberately broken" in md
    assert "AMD EPYC" in md and "float32 matmul peak" in md and "1-minute load average" in md
    assert "## Generated text" in md and "### pytorch" in md
    assert "## Beside the original suite" in md and "1:37:48" in md  # pytorch's 5868 s
    assert "1:37:48" in printed and "| numpy |" in printed

    for name in ("loss_per_epoch.png", "loss_vs_time.png", "throughput.png"):
        assert (saved / name).read_bytes()[:8] == PNG_MAGIC


def test_agreement_and_run_time_lines(saved):
    table, md, _ = report.build(saved)
    line = report.loss_agreement(table)
    # numpy, pytorch and chainer trained the same model on the same batches.
    trained = table[table["status"] == "ok"]
    spread = trained["val_loss"].max() - trained["val_loss"].min()
    assert line.startswith("Agreement: across the 3 rows the last epoch's losses span ")
    assert f"validation loss {spread:.4f} nats" in line and "within the target of 0.02" in line
    far = table.copy()
    far.loc[far["framework"] == "pytorch", "train_loss"] += 0.05
    assert "outside the target of 0.02" in report.loss_agreement(far)
    assert report.loss_agreement(table.iloc[:1]) is None  # one row: nothing to agree with

    _, frameworks = report.load_records(saved)
    seconds = [s for s in map(records.run_seconds, report._records(frameworks)) if s is not None]
    assert report.run_time(frameworks).startswith(
        f"Run time: {logs.format_duration(sum(seconds))}, the {len(seconds)} framework runs "
        "summed")
    assert line in md and "Run time: " in md


def page_checkout(tmp_path, monkeypatch) -> Path:
    """A checkout of the report's own: its reference directory and results page in tmp."""
    root = tmp_path / "checkout"
    monkeypatch.setattr(report, "ROOT", root)
    monkeypatch.setattr(report, "REFERENCE_ROOT", root / "benchmarks" / "reference")
    monkeypatch.setattr(report, "RESULTS_PAGE", root / "docs" / "RESULTS.md")
    return root


def test_full_run_reference_gets_its_own_section_beside_the_quick_one(saved, tmp_path,
                                                                       monkeypatch):
    """A full run publishes beside the quick table, not over it, with the original suite's
    numbers and the sentence on why they differ among themselves."""
    root = page_checkout(tmp_path, monkeypatch)
    quick = tmp_path / "quick"
    shutil.copytree(saved, quick)
    lines = (quick / "records.jsonl").read_text().splitlines()
    run = json.loads(lines[0])
    run["settings"]["profile"] = "quick"
    (quick / "records.jsonl").write_text("\n".join([json.dumps(run), *lines[1:]]) + "\n")
    report.main([str(quick), "--reference"])
    run["settings"]["profile"] = "full"
    (saved / "records.jsonl").write_text("\n".join([json.dumps(run), *lines[1:]]) + "\n")
    report.main([str(saved), "--reference", "--compare-original"])

    text = unpad((root / "docs" / "RESULTS.md").read_text())
    quick_part, full_part = text.split("### 32 epochs, the original suite's table (full profile)")
    assert "### One epoch of every framework (quick profile)\n\nProfile `quick`" in quick_part
    assert full_part.startswith("\n\nProfile `full`")
    assert "| numpy | 2.4.6 |" in full_part and "Agreement: across the 3 rows" in full_part
    assert "| pytorch | pytorch_model.py | 1:37:48.0 | 1.32285 |" in full_part
    assert "The original's losses are not comparable with one another" in full_part
    assert "../benchmarks/reference/amd-epyc-2core/full/loss_per_epoch.png" in full_part
    assert "../benchmarks/reference/amd-epyc-2core/full/loss_vs_time.png" in full_part


@pytest.fixture
def loaded(tmp_path) -> Path:
    out = tmp_path / "loaded"
    shutil.copytree(DATA / "bench" / "loaded", out)
    return out


def test_loaded_machine_report_flags_the_rows(loaded):
    table, md, _ = report.build(loaded)
    md = unpad(md)
    by = table.set_index("framework")
    # Ranked by the median-based s/epoch; both time columns kept.
    assert list(table["framework"]) == ["numpy", "pytorch"]
    assert by.loc["numpy", "s_per_epoch"] < by.loc["pytorch", "s_per_epoch"]
    assert {"s_per_epoch", "wall_s_per_epoch", "step_p90_ms", "step_p99_ms", "step_max_ms",
            "stalls", "peak_diff", "gen_sampler_share", "batch_gen_chars_per_s"} <= set(table)
    # pytorch's second run: peaks 40 -> 28 GFLOP/s; numpy's second run: 2 stalls.
    assert by.loc["pytorch", "peak_diff"] == pytest.approx(40 / 28 - 1)
    assert by.loc["pytorch", "flags"] == "peaks 43% apart¹"
    assert by.loc["numpy", "flags"] == "2 stalls²" and by.loc["numpy", "stalls"] == 2
    assert by.loc["numpy", "step_max_ms"] == 200.0  # the worst run's
    assert "| peaks 43% apart¹ |" in md and "| 2 stalls² |" in md
    assert "¹ In at least one of this row's runs" in md and "² Training steps that" in md
    # The header: CPU, cores, threads, load before / around / after, the peaks.
    header = md.split("\n\n")[2]
    assert header.startswith("Machine: AMD EPYC, 2 cores (2 usable), 2 threads per framework")
    assert "10.9 before the run; 10.8–13.8 (min–max)" in header and "13.8 after" in header
    assert "other work shared the CPU" in header
    assert "28.0–40.0 GFLOP/s over 8 measurements, right before and right after each run" in md
    # Each run's MFU is against its own peaks' mean.
    raw = [r for r in report._records(report.load_records(loaded)[1])
           if r["framework"] == "pytorch"]
    mfus = [report.summarise(r)["mfu"] for r in raw]
    assert report.summarise(raw[1])["peak_flops"] == 34e9
    assert by.loc["pytorch", "mfu"] == pytest.approx(sum(mfus) / 2)
    assert "## Step times and the machine" in md and "## Generation" in md


def test_repeats_give_median_and_spread(loaded):
    table, md, _ = report.build(loaded)
    md = unpad(md)
    raw = [report.summarise(r) for r in report._records(report.load_records(loaded)[1])
           if r["framework"] == "numpy"]
    row = table.set_index("framework").loc["numpy"]
    for column in report.SPREAD:
        values = sorted(r[column] for r in raw)
        assert row[column] == pytest.approx(sum(values) / 2), column  # median of two
        assert (row[f"{column}_min"], row[f"{column}_max"]) == (values[0], values[1]), column
    cell = report._spread_cell(row.to_dict(), "s_per_epoch", "{:,.1f}")
    low, high = row["s_per_epoch_min"], row["s_per_epoch_max"]
    assert cell == f"{row['s_per_epoch']:,.1f} ({low:,.1f}–{high:,.1f})"
    assert f"| numpy | 2.4.6 | {cell} |" in md
    assert "medians over repeats, with (min–max)" in md
    # One run: no spread.
    assert report._spread_cell({"step_ms": 2.0, "step_ms_min": 2.0, "step_ms_max": 2.0},
                               "step_ms", "{:.1f}") == "2.0"


def test_generation_figures_sampler_and_batch(loaded):
    table, md, _ = report.build(loaded)
    md = unpad(md)
    by = table.set_index("framework")
    raw = {(r["framework"], r["repeat"]): r for r in
           report._records(report.load_records(loaded)[1])}
    gen = raw["pytorch", 1]["generation"]  # the run whose generate timed its sampler
    assert by.loc["pytorch", "gen_sampler_s"] == gen["sampler_s"]
    assert by.loc["pytorch", "gen_sampler_share"] == pytest.approx(
        gen["sampler_s"] / gen["duration_s"])
    assert by.loc["pytorch", "gen_model_chars_per_s"] == pytest.approx(
        gen["chars"] / (gen["duration_s"] - gen["sampler_s"]))
    assert pd.isna(by.loc["numpy", "gen_sampler_s"])  # the older line: no sampler part
    batch = raw["numpy", 0]["generation_batch"]
    assert batch["num_samples"] == 64 and batch["total_chars"] == 64 * 50
    assert by.loc["numpy", "batch_gen_samples"] == 64
    assert "`--num-samples 64`, all 64 streams' characters (64 x 50)" in md


def test_reference_publishes_the_records_and_writes_the_results_page(saved, tmp_path,
                                                                    monkeypatch):
    root = page_checkout(tmp_path, monkeypatch)
    page = root / "docs" / "RESULTS.md"
    report.main([str(saved), "--reference"])

    # The committed set: the records, the report and the plots; nothing else of a run.
    published = root / "benchmarks" / "reference" / "amd-epyc-2core" / "custom"
    assert sorted(p.name for p in published.iterdir()) == [
        "loss_per_epoch.png", "loss_vs_time.png", "records.jsonl", "report.md", "results.csv",
        "throughput.png"]
    assert (published / "records.jsonl").read_text() == (saved / "records.jsonl").read_text()

    text = unpad(page.read_text())
    assert text.startswith("# Results\n\nWritten whole by")
    assert "- [amd-epyc-2core](#amd-epyc-2core): custom\n" in text
    assert "### custom profile\n\nProfile `custom`" in text
    link = "../benchmarks/reference/amd-epyc-2core/custom"
    assert f"]({link}/report.md)" in text and f"]({link}/throughput.png)" in text
    assert "| numpy | 2.4.6 |" in text

    # Again from the published directory itself: the same files, the same page.
    report.main([str(published), "--reference"])
    assert len(list(published.iterdir())) == 6 and unpad(page.read_text()) == text


def test_results_page_puts_the_newest_kind_first(saved, tmp_path, monkeypatch):
    """Each machine kind gets its part, the kind of the newest run first (the headline)."""
    root = page_checkout(tmp_path, monkeypatch)
    report.main([str(saved), "--reference"])
    lines = (saved / "records.jsonl").read_text().splitlines()
    run = json.loads(lines[0])
    run["machine"] = {**run["machine"], "cpu": "Intel(R) Xeon(R) Platinum 8488C",
                      "isa": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    run["started"] = "2099-01-01T00:00:00+00:00"
    (saved / "records.jsonl").write_text("\n".join([json.dumps(run), *lines[1:]]) + "\n")
    report.main([str(saved), "--reference"])
    text = (root / "docs" / "RESULTS.md").read_text()
    assert text.index("## intel-xeon-platinum-8488c-amx-2core") < text.index("## amd-epyc-2core")
    assert list(report.reference_dirs(root / "benchmarks" / "reference")) == [
        "intel-xeon-platinum-8488c-amx-2core", "amd-epyc-2core"]


def test_committed_reference_renders_and_names_no_machine_directory(tmp_path):
    """The reference results docs/RESULTS.md shows: only the committed set, portable records,
    and the report still renders from them."""
    dirs = [p.parent for p in (ROOT / "benchmarks" / "reference").glob("*/*/records.jsonl")]
    assert dirs, "no reference results committed"
    for ref in dirs:
        text = (ref / "records.jsonl").read_text()
        assert "hostname" not in text and '"/' not in text and str(ROOT) not in text
        run = json.loads(text.splitlines()[0])
        assert ref.parent.name == records.machine_slug(run["machine"])
        copy = tmp_path / ref.parent.name / ref.name
        copy.mkdir(parents=True)
        shutil.copy(ref / "records.jsonl", copy)
        table, _, _ = report.build(copy)
        assert (table["status"] == "ok").any()
        # Exactly the files the report writes from those records, none left over.
        assert sorted(p.name for p in ref.iterdir()) == sorted(p.name for p in copy.iterdir())


def test_precision_line_sets_each_bf16_row_beside_its_fp32_row():
    """Issue 29's long-run check, in every report with bf16 rows: a bf16 row's validation
    loss minus its fp32 row's, within 0.02 nats or said not to be."""
    quick = ROOT / "benchmarks" / "reference" / "amd-epyc-avx512bf16-2core" / "quick"
    table = report.summary_table(report.load_records(quick)[1])
    line = report.precision_agreement(table)
    by_name = dict(zip(table["framework"], table["val_loss"], strict=True))
    difference = by_name["keras[jax,bf16]"] - by_name["keras[jax]"]
    assert line.startswith("bf16-mixed against fp32: each bf16 row's validation loss minus "
                           "its fp32 row's after 1 epoch: ")
    assert (f"keras[jax,bf16] {difference:+.4f} ({by_name['keras[jax,bf16]']:.4f} against "
            f"{by_name['keras[jax]']:.4f})") in line
    assert line.count(" against ") == 1 + 7 and "(all within the target of 0.02 nats)" in line
    far = table.copy()
    far.loc[far["framework"] == "mxnet[bf16]", "val_loss"] += 0.03
    assert "(not all within the target of 0.02 nats)" in report.precision_agreement(far)
    fp32_only = table[table["precision"] == "fp32"]
    assert report.precision_agreement(fp32_only) is None


def test_precision_speedup_gives_each_bf16_row_against_its_target():
    """The speed-up line: each bf16 row's fp32 partner's median step over its own, with
    issue 29's target (3x PyTorch, 2x the others) and how many reach it."""
    quick = ROOT / "benchmarks" / "reference" / "amd-epyc-avx512bf16-2core" / "quick"
    table = report.summary_table(report.load_records(quick)[1])
    step = dict(zip(table["framework"], table["step_ms"], strict=True))
    line = report.precision_speedup(table)
    assert line.startswith("bf16-mixed speed-up: each bf16 row's median step against its "
                           "fp32 row's: ")
    assert (f"pytorch[bf16] {step['pytorch'] / step['pytorch[bf16]']:.2f}x "
            f"({step['pytorch[bf16]']:.1f} against {step['pytorch']:.1f} ms; target 3x)") in line
    assert f"keras[jax,bf16] {step['keras[jax]'] / step['keras[jax,bf16]']:.2f}x" in line
    assert line.count("target 2x") == 6 and "(0 of 7 reach their target;" in line
    fast = table.copy()
    bf16 = fast["precision"] == "bf16-mixed"
    fast.loc[bf16, "step_ms"] = fast.loc[bf16, "step_ms"] / 5
    assert "(6 of 7 reach their target;" in report.precision_speedup(fast)  # mxnet: 1.3x
    assert report.precision_speedup(table[~bf16]) is None
    points = pd.concat([table.assign(point="rnn128-batch64"), fast.assign(point="rnn512-batch64")])
    line = report.precision_speedup(points)  # a sweep: each bf16 row against its own point's
    assert f"pytorch[bf16] at rnn128-batch64 {step['pytorch'] / step['pytorch[bf16]']:.2f}x" in line
    assert "(6 of 14 reach their target;" in line


def test_a_run_that_generated_nothing_has_no_generation_columns():
    """The bf16-long profile generates nothing: its table and report.md leave generation
    out instead of showing a column of dashes; the quick profile's keep it."""
    reference = ROOT / "benchmarks" / "reference" / "amd-epyc-avx512bf16-2core"
    long_table = report.summary_table(report.load_records(reference / "bf16-long")[1])
    quick_table = report.summary_table(report.load_records(reference / "quick")[1])
    assert not report.generates(long_table) and report.generates(quick_table)
    assert "gen chars/s" not in report.results_table(long_table)
    assert "gen chars/s" in report.results_table(quick_table)
    notes = " ".join(report.row_notes(long_table))
    assert "train with `--precision bf16-mixed`" in notes and "generation" not in notes
    assert "## Generation" not in (reference / "bf16-long" / "report.md").read_text()


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


def test_cells_table_gives_each_cell_against_the_lstm():
    table = pd.DataFrame([
        {"framework": f, "cell": c, "step_ms": ms, "val_loss": 2.0 + i / 10,
         "duration_s": 1.0}
        for f, steps in (("slow", (40.0, 30.0, 20.0)), ("fast", (10.0, 9.0, 4.0)))
        for i, (c, ms) in enumerate(zip(("lstm", "gru", "rnn"), steps))])
    lines = unpad(report.cells_table(table)).splitlines()
    assert lines[0] == ("| framework | lstm step ms | gru step ms | rnn step ms | gru / lstm "
                        "| rnn / lstm | lstm val loss | gru val loss | rnn val loss |")
    assert lines[2] == "| fast | 10.0 | 9.0 | 4.0 | 0.90x | 0.40x | 2.0000 | 2.1000 | 2.2000 |"
    assert lines[3].startswith("| slow | 40.0 | 30.0 | 20.0 | 0.75x | 0.50x |")


# ---------------------------------------------------------------------------------------
# bf16 rows and the inference engine's row (benchmarks.rows)
# ---------------------------------------------------------------------------------------


DEMO_MODEL = '''
from charrnn.common.config import BF16_MIXED, FP32

class Base:
    precisions = (FP32, BF16_MIXED)

class Demo(Base):
    pass

class Plain:
    precisions: tuple = ("fp32",)

MODEL = Demo
VARIANTS = {"plain": Plain}
'''


def test_precisions_are_read_from_the_framework_class(tmp_path, monkeypatch):
    """What a framework declares, without importing it: the class MODEL (or the variant)
    names, through its bases; numpy's agrees with its imported class."""
    assert registry.declared_precisions(registry.FRAMEWORKS["numpy"]) == (
        registry.load("numpy").precisions)
    assert registry.declared_precisions(registry.FRAMEWORKS["chainer[nstep]"]) == ("fp32",)
    (tmp_path / "frameworks").mkdir()
    (tmp_path / "frameworks" / "demo_model.py").write_text(DEMO_MODEL)
    monkeypatch.setattr(registry, "PACKAGE", tmp_path)
    demo = registry.Entry("demo", "demo_model", "any", "numpy")
    assert registry.declared_precisions(demo) == ("fp32", "bf16-mixed")  # from Base
    plain = registry.Entry("demo[plain]", "demo_model", "any", "numpy", variant="plain")
    assert registry.declared_precisions(plain) == ("fp32",)
    assert registry.declared_precisions(registry.Entry("x", "no_model", "any", "x")) == ("fp32",)


def test_profiles_plan_a_bf16_row_per_framework_that_declares_it(monkeypatch):
    names = [r.name for r in run_all.select_entries(None, run_all.PROFILES["quick"])]
    fp32 = list(registry.FRAMEWORKS)
    # Every framework, each bf16 row right after its fp32 row, the NumPy emulation left out,
    # then the engine.
    assert [n for n in names if "bf16" not in n and n != "onnxruntime"] == fp32
    bf16 = [n for n in names if "bf16" in n]
    assert bf16 == ["pytorch[bf16]", "tensorflow[bf16]", "keras[tensorflow,bf16]",
                    "keras[jax,bf16]", "keras[torch,bf16]", "jax[bf16]", "mxnet[bf16]"]
    for name in bf16:
        assert names[names.index(name) - 1] == rows.fp32_name(name)
    assert names[-1] == "onnxruntime" and "numpy[bf16]" not in names
    # The sweep-bf16 profile: the frameworks with both rows only; the sweep: fp32 only.
    pairs = [r.name for r in run_all.select_entries(None, run_all.PROFILES["sweep-bf16"])]
    assert pairs == [n for n in names if n != "onnxruntime" and (
        n in bf16 or f"{n}[bf16]" in bf16 or n.replace("]", ",bf16]") in bf16)]
    assert [r.name for r in run_all.select_entries(None, run_all.PROFILES["sweep"])] == fp32
    long_rows = run_all.select_entries(None, run_all.PROFILES["bf16-long"])  # the long run
    assert [r.name for r in long_rows] == pairs
    # A framework that gains a bf16 path gains a row, with no edit of the benchmark.
    declared = registry.declared_precisions
    monkeypatch.setattr(registry, "declared_precisions", lambda e: (
        ("fp32", "bf16-mixed") if e.name == "pytensor" else declared(e)))
    names = [r.name for r in run_all.select_entries(None, run_all.PROFILES["quick"])]
    assert names[names.index("pytensor") + 1] == "pytensor[bf16]"
    # Named, the emulation runs too.
    assert [r.precision for r in run_all.select_entries("numpy[bf16],numpy")] == [
        "bf16-mixed", "fp32"]


def test_bf16_row_trains_in_bf16_and_generates_nothing(tmp_path):
    plan = child.Plan(tiny_settings(tmp_path), Path("out"), None, False)
    row = run_all.select_entries("pytorch[bf16]")[0]
    cmd = child.train_command(row, plan, Path("run"))
    assert parse_args(cmd[cmd.index("train"):], "test")[1].precision == "bf16-mixed"
    assert "--precision" not in child.train_command(Row(registry.FRAMEWORKS["pytorch"]), plan,
                                                    Path("run"))
    assert row.generations((1, 64)) == () and row.slug == "pytorch-bf16"
    assert plan.run_dir(run_all.select_entries("keras[jax,bf16]")[0], 0).parts[-2:] == (
        "keras-jax-bf16", "0")
    # The precision is the runner's to set, per row.
    with pytest.raises(SystemExit, match=r"--frameworks NAME\[bf16\]"):
        tiny_settings(tmp_path, "--extra-train-args", "--precision bf16-mixed")


def test_engine_row_prepares_then_generates_and_only_where_generation_is(tmp_path):
    plan = child.Plan(tiny_settings(tmp_path, "--gen-length", "50"), tmp_path / "out", None,
                      False)
    engine = run_all.select_entries("onnxruntime")[0]
    assert engine.engine and engine.generations((1, 64)) == (1, 64)
    prepare = child.prepare_command(engine, plan, Path("run"))
    assert prepare[1:4] == ["-m", "benchmarks.onnx_row", "prepare"]
    assert "--init-from" in prepare and "1,64" in prepare
    gen = child.generate_command(engine, plan, Path("run"), 64,
                                 {"intra_op_threads": 2, "optimization": "basic"})
    assert gen[1:8] == ["-m", "benchmarks.onnx_row", "generate", "--intra-op-threads", "2",
                        "--optimization", "basic"]
    cfg = parse_args(["generate", *gen[8:]], "test")[1]  # generate's own flags
    assert cfg.num_samples == 64 and cfg.checkpoint_path == "run/model.step.onnx"
    for profile in ("sweep", "sweep-bf16", "bf16-long", "scaling"):
        with pytest.raises(SystemExit, match="inference engine generates only"):
            run_all.select_entries("pytorch,onnxruntime", run_all.PROFILES[profile])


def test_onnx_row_keeps_the_fastest_option_per_stream_count():
    measured = [{"num_samples": n, "intra_op_threads": t, "optimization": level,
                 "chars_per_s": rate}
                for n, t, level, rate in ((1, 1, "all", 900.0), (1, 2, "all", 400.0),
                                          (64, 1, "basic", 5e4), (64, 2, "extended", 6e4))]
    assert onnx_row.best_options(measured) == {
        "1": {"intra_op_threads": 1, "optimization": "all", "chars_per_s": 900.0},
        "64": {"intra_op_threads": 2, "optimization": "extended", "chars_per_s": 6e4}}


def test_engine_and_bf16_rows_run_end_to_end(tmp_path):
    """A tiny run of numpy[bf16] (the emulation, named) and onnxruntime: the bf16 row's
    record has its precision and its bf16 peaks beside the float32 ones, and no generation;
    the engine's its session options, measured and chosen, and both generations."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")  # the bf16 peak
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "results"
    proc = runner(out, corpus, "numpy[bf16],onnxruntime", "--num-epochs", "1", "--max-steps",
                  "3", "--gen-length", "40")
    assert proc.returncode == 0, proc.stderr
    bf16, engine = framework_records(out)
    assert bf16["status"] == "ok" and bf16["precision"] == "bf16-mixed", bf16["error"]
    assert "--precision bf16-mixed" in bf16["train_command"]
    assert "generation" not in bf16 and bf16["peak_bf16_before"]["dtype"] == "bf16"
    assert bf16["peak_bf16_after"]["peak_flops"] > 0 and bf16["peak_after"]["peak_flops"] > 0
    assert engine["status"] == "ok" and engine["engine"] is True, engine["error"]
    assert engine["script"] == "benchmarks/onnx_row.py" and "train_command" not in engine
    assert engine["header"]["versions"]["onnxruntime"]
    session = engine["session"]
    assert set(session["chosen"]) == {"1", "64"} and len(session["measured"]) == 2 * 3 * 1
    chosen = session["chosen"]["64"]
    assert (f"--intra-op-threads {chosen['intra_op_threads']} --optimization "
            f"{chosen['optimization']}") in engine["generate_batch_command"]
    assert engine["generation"]["chars"] == 40 and engine["generation_batch"]["num_samples"] == 64
    md = unpad((out / "report.md").read_text())
    assert "| onnxruntime | " in md and "*onnxruntime* is an inference engine" in md
    assert "| onnxruntime | 64 | 1 | all |" in md and "| kept |" in md


def engine_and_bf16_records(loaded: Path, isa: list[str] | None = None) -> Path:
    """The loaded run's records with a bf16 row (its pytorch runs, as bf16-mixed with bf16
    peaks of 80 and 100 GFLOP/s and no generation) and an onnxruntime row (numpy's
    generations, as an engine's), on a machine with the ISA extensions `isa`."""
    lines = [json.loads(line) for line in (loaded / "records.jsonl").read_text().splitlines()]
    run = lines[0]
    run["machine"]["isa"] = ["avx2", "avx512f", "avx512_bf16"] if isa is None else isa
    extra = []
    for r in lines[1:]:
        if r["framework"] == "pytorch":
            bf16 = {k: v for k, v in r.items() if not k.startswith(("generat",))}
            bf16.update(framework="pytorch[bf16]", precision="bf16-mixed",
                        peak_bf16_before={"peak_flops": 80e9, "dtype": "bf16", "size": 1024,
                                          "repeats": 10, "library": "torch 2.13.0+cpu",
                                          "cpu_capability": "AVX512",
                                          "torch_fp32_flops": 40e9},
                        peak_bf16_after={"peak_flops": 100e9, "dtype": "bf16"})
            extra.append(bf16)
        if r["framework"] == "numpy":
            keep = ("kind", "repeat", "status", "stage", "error", "started", "finished",
                    "loadavg_start", "loadavg_end", "peak_before", "peak_after", "generation",
                    "generation_batch", "generate_process", "generate_batch_process")
            engine = {k: r[k] for k in keep if k in r}
            engine.update(framework="onnxruntime", engine=True, env="modern",
                          script="benchmarks/onnx_row.py",
                          header={"versions": {"onnxruntime": "1.32.0", "onnx": "1.23.2"},
                                  "device": "cpu", "threads": 2, "python": "3.11.7"},
                          session={"chosen": {"1": {"intra_op_threads": 1,
                                                    "optimization": "all"},
                                              "64": {"intra_op_threads": 2,
                                                     "optimization": "basic"}},
                                   "measured": [
                                       {"num_samples": n, "intra_op_threads": t,
                                        "optimization": level, "chars_per_s": 100.0 * t + n}
                                       for n in (1, 64) for t in (1, 2)
                                       for level in ("basic", "all")]})
            extra.append(engine)
    (loaded / "records.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                  for r in [*lines, *extra]))
    return loaded


def test_report_shows_bf16_and_engine_rows_for_what_they_are(loaded):
    table, md, _ = report.build(engine_and_bf16_records(loaded))
    md = unpad(md)
    by = table.set_index("framework")
    # The bf16 row's MFU is against its bf16 peaks' mean; the fp32 row's against the float32.
    raw = [r for r in report._records(report.load_records(loaded)[1])
           if r["framework"] == "pytorch[bf16]"]
    header, step_s = raw[0]["header"], report.summarise(raw[0])["step_ms"] / 1000
    assert report.summarise(raw[0])["mfu"] == pytest.approx(
        mfu(header["flops_per_char"], header["chars_per_batch"], step_s, 90e9))
    assert by.loc["pytorch[bf16]", "peak_bf16_gflops"] == pytest.approx(90.0)
    assert by.loc["pytorch[bf16]", "precision"] == "bf16-mixed"
    # Main table: the bf16 row's generation n/a, the engine last with its training n/a.
    main = report.results_table(table).splitlines()
    assert "| n/a | n/a |" in unpad(next(r for r in main if "| pytorch[bf16] |" in r))
    last = unpad(main[-1])
    assert last.startswith("| onnxruntime | 1.32.0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
    assert f"| {by.loc['onnxruntime', 'gen_chars_per_s']:,.0f} (" in last
    headline = unpad(report.headline_table(table)).splitlines()
    assert headline[-1].startswith("| onnxruntime | n/a | n/a | n/a | n/a |")
    assert "pytorch[bf16] trains with `--precision bf16-mixed`" in md
    assert "bf16 products on this CPU: AVX512-BF16" in md and "³" not in md
    assert ("*onnxruntime* is an inference engine: its training figures are n/a (it trains "
            "nothing)") in md
    assert ("(1 stream: 1 intra-op thread, optimisation all; 64 streams: 2 intra-op threads, "
            "optimisation basic)") in md
    # The bf16 peaks beside the float32 ones: the header and the step-time table.
    assert "bf16 matmul peak (the bf16 rows' MFU is against it): 80.0–100.0 GFLOP/s over 4" in md
    assert "| bf16 peak GFLOP/s |" in md
    assert ("- bf16 matmul peak: torch 2.13.0+cpu (ATen CPU capability AVX512), bf16 operands "
            "and result, 1024² matrices, best of 10,") in md
    assert ("in its first measurement 80.0 GFLOP/s, and PyTorch's own float32 product on the "
            "same matrices right after 40.0\n- git commit") in md
    # Generation: the engine, not the bf16 row; its memory; the session options measured.
    generation = md.split("## Generation")[1].split("## Machine")[0]
    assert "| onnxruntime |" in generation and "| pytorch[bf16] |" not in generation
    assert "| peak MiB | batch peak MiB |" in generation
    assert "| onnxruntime | 64 | 2 | basic | 264 | kept |" in generation
    assert "| onnxruntime | 1 | 1 | all | 101 | kept |" in generation
    # The agreement line counts the rows that trained: the bf16 row, not the engine.
    assert "Agreement: across the 3 rows" in md
    assert "### onnxruntime (the untrained initial weights)" in md


def test_bf16_rows_without_bf16_units_are_labelled_emulated(loaded):
    table, md, _ = report.build(engine_and_bf16_records(loaded, isa=["avx2", "avx512f"]))
    assert table.set_index("framework").loc["pytorch[bf16]", "flags"].endswith(
        "bf16 emulated³")
    md = unpad(md)
    assert "³ This CPU has neither AVX512-BF16 nor AMX" in md
    assert "bf16 products here: no AVX512-BF16 or AMX, so the frameworks emulate them" in md
