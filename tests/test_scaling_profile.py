"""The scaling profile (`run_all --profile scaling`): data-parallel frameworks trained as
1 and 2 processes (charrnn.common.launch), a record per world size, and the report's scaling
table: a real tiny run of PyTorch end to end, and the table's figures on records
written here (a step time chosen per world size, so the expected numbers are exact).
No test asserts a timing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from charrnn.common import registry
from charrnn.common.paths import ROOT
from tests.conftest import TEXT
from tests.markdown import unpad

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks import report, run_all  # noqa: E402
from benchmarks.mfu import mfu  # noqa: E402
from tests.test_benchmarks import TINY_MODEL, framework_records, run_all_command  # noqa: E402

DATA_PARALLEL = [e.name for e in registry.FRAMEWORKS.values() if e.data_parallel]
CHARS_PER_BATCH = 64 * 64


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 5, encoding="utf-8")  # one batch of the default 64 x 64
    return path


def test_profile_selects_the_data_parallel_frameworks(corpus):
    proc = subprocess.run([*run_all_command(), "--profile", "scaling", "--text-path",
                           str(corpus), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    headers = [line for line in proc.stdout.splitlines() if line.startswith("# ")]
    assert "pytorch" in DATA_PARALLEL and "numpy" not in DATA_PARALLEL
    assert headers == [f"# {name} with {w} process{'es' if w > 1 else ''}"
                       for w in (1, 2) for name in DATA_PARALLEL]
    commands = [line for line in proc.stdout.splitlines() if " train " in line]
    assert all("--threads 1 " in c and "--val-fraction 0" in c for c in commands)
    assert " -m charrnn.common.launch --nproc 1 " in commands[0]
    assert " -m charrnn.common.launch --nproc 2 " in commands[-1]
    assert not [line for line in proc.stdout.splitlines() if " generate " in line]


def test_world_sizes_are_checked(corpus):
    def settings(*flags):
        return run_all.resolve_settings(run_all.parse_args(["--text-path", str(corpus),
                                                            *flags]))
    s = settings("--profile", "scaling")
    assert (s.world_sizes, s.threads) == ((1, 2), 1)  # one thread per process
    assert s.identity()["world_sizes"] == [1, 2] and s.max_steps == run_all.SWEEP_STEPS
    assert s.identity()["extra_train_args"] == ["--val-fraction", "0"]
    assert "world_sizes" not in settings().identity()  # older records have none
    s = settings("--profile", "scaling", "--world-sizes", "1,4", "--threads", "2")
    assert (s.world_sizes, s.threads) == ((1, 4), 2)
    assert "at world sizes 1, 4 (`python -m charrnn.common.launch --nproc W`, 2 threads per" in (
        s.description)
    for flags, says in ((("--profile", "scaling", "--world-sizes", "1,3"), "does not divide"),
                        (("--world-sizes", "1,2"), "needs --profile scaling"),
                        (("--profile", "scaling", "--cells", "lstm,gru"), "one cell")):
        with pytest.raises(SystemExit, match=says) as exc:
            settings(*flags)
        assert "\n" not in str(exc.value)


def test_scaling_profile_end_to_end(corpus, tmp_path):
    """PyTorch as 1 and 2 processes (numpy, named too, has no data-parallel path)."""
    out = tmp_path / "results"
    cmd = [*run_all_command(), "--profile", "scaling", "--frameworks", "numpy,pytorch",
           "--text-path", str(corpus), "--extra-train-args", TINY_MODEL, "--max-steps", "3",
           "--matmul-size", "64", "--matmul-repeats", "1", "--timeout", "120", "--out",
           str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = {(r["framework"], r.get("world_size")): r for r in framework_records(out)}
    assert list(found) == [("numpy", None), ("pytorch", 1), ("pytorch", 2)]
    assert found["numpy", None]["status"] == "skipped"
    assert "no data-parallel path" in found["numpy", None]["error"]
    for w in (1, 2):
        r = found["pytorch", w]
        assert r["status"] == "ok", r["error"]
        assert r["header"]["world_size"] == w and r["header"]["threads"] == 1
        assert f"-m charrnn.common.launch --nproc {w} pytorch_model.py train " in r["train_command"]
        assert r["epochs"][-1]["step"] == 3 and "generation" not in r
        assert (out / "runs" / "pytorch" / f"w{w}" / "0" / "train.jsonl").exists()
    # The same batches and weights: the whole batch's loss either way.
    assert found["pytorch", 2]["epochs"][-1]["train/loss"] == pytest.approx(
        found["pytorch", 1]["epochs"][-1]["train/loss"], abs=1e-4)
    run = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert run["settings"]["threads"] == 1 and run["settings"]["world_sizes"] == [1, 2]
    assert "| framework | chars/s W=1 | chars/s W=2 | speedup W=2 | efficiency W=2 |" in (
        unpad(proc.stdout))
    md = unpad((out / "report.md").read_text())
    assert "## Scaling" in md and "| framework | processes | version |" in md
    assert "gen chars/s" not in md and "## Generation" not in md

    resumed = subprocess.run([*cmd, "--resume", "--no-report"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "pytorch with 2 processes: already recorded" in resumed.stderr


# ---------------------------------------------------------------------------------------
# The table, on records with chosen step times
# ---------------------------------------------------------------------------------------


def framework_record(name: str, world_size: int, step_s: float | None) -> dict:
    """A scaling run's record: 24 steps whose median is `step_s` (None: failed)."""
    record = {"kind": "framework", "framework": name, "repeat": 0, "status": "ok",
              "stage": None, "error": None, "world_size": world_size,
              "started": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T10:00:30+00:00",
              "peak_before": {"peak_flops": 1e10}, "peak_after": {"peak_flops": 1e10},
              "header": {"versions": {name: "1.0"}, "threads": 1, "world_size": world_size,
                         "train_batches": 245, "chars_per_batch": CHARS_PER_BATCH,
                         "flops_per_char": 1000},
              "train_process": {"max_rss_mb": 300.0, "wall_s": 10.0}, "steps": []}
    if step_s is None:
        record.update(status="failed", stage="train", error="error: rank 1 of 2: timed out",
                      epochs=[])
    else:
        record["epochs"] = [{"epoch": 1, "step": 24, "duration_s": 24 * step_s,
                             "step_s_median": step_s, "first_step_s": 2.0, "train/loss": 3.5,
                             "val/loss": None}]
    return record


@pytest.fixture
def scaling_records(tmp_path) -> Path:
    run = {"kind": "run", "started": "2026-12-01T10:00:00+00:00",
           "settings": {"profile": "scaling", "max_steps": 24, "threads": 1,
                        "world_sizes": [1, 2], "train_batches": 245,
                        "chars_per_batch": CHARS_PER_BATCH, "text_path": "tinyshakespeare.txt"},
           "description": "scaling", "machine": {"cpu": "AMD EPYC", "cores": 2},
           "loadavg": [0.1, 0.1, 0.1]}
    frameworks = [framework_record("pytorch", 1, 0.1), framework_record("jax", 1, 0.2),
                  framework_record("pytorch", 2, 0.0625), framework_record("jax", 2, None)]
    path = tmp_path / "scaling"
    path.mkdir()
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                for r in [run, *frameworks]))
    return path


def test_scaling_table_speedup_and_efficiency(scaling_records):
    table, md, _ = report.build(scaling_records)
    md = unpad(md)
    by = table.set_index(["framework", "world_size"])
    assert by.loc[("pytorch", 1), "chars_per_s"] == pytest.approx(CHARS_PER_BATCH / 0.1)
    assert by.loc[("pytorch", 2), "chars_per_s"] == pytest.approx(CHARS_PER_BATCH / 0.0625)
    # MFU of W processes: against W times the peak their threads have.
    assert by.loc[("pytorch", 2), "mfu"] == pytest.approx(
        mfu(1000, CHARS_PER_BATCH, 0.0625, 2 * 1e10))
    rows, columns = report.scaling_rows(table)
    assert [h for _, h, _ in columns] == ["framework", "chars/s W=1", "chars/s W=2",
                                          "speedup W=2", "efficiency W=2"]
    pytorch, jax = rows.to_dict("records")
    assert pytorch["speedup@2"] == pytest.approx(1.6)
    assert pytorch["efficiency@2"] == pytest.approx(0.8)
    assert pd.isna(jax["speedup@2"]) and pd.isna(jax["efficiency@2"])  # its W=2 run failed
    lines = unpad(report.scaling_table(table)).splitlines()
    assert lines[2] == "| pytorch | 40,960 | 65,536 | 1.60x | 80% |"
    assert lines[3] == "| jax | 20,480 | – | – | – |"
    assert "## Scaling" in md and unpad(report.scaling_table(table)) in md
    assert "- **jax W=2**: failed at train" in md
    csv = pd.read_csv(scaling_records / "results.csv")
    assert sorted(csv["world_size"]) == [1, 1, 2, 2]


def test_scaling_reference_gets_its_section_of_the_results_page(scaling_records, tmp_path,
                                                                monkeypatch):
    root = tmp_path / "checkout"
    page = root / "docs" / "RESULTS.md"
    monkeypatch.setattr(report, "ROOT", root)
    monkeypatch.setattr(report, "REFERENCE_ROOT", root / "benchmarks" / "reference")
    monkeypatch.setattr(report, "RESULTS_PAGE", page)
    report.main([str(scaling_records), "--reference"])
    text = unpad(page.read_text())
    block = text.split("### Data-parallel throughput (scaling profile)\n\n")[1]
    assert block.startswith("Profile `scaling` on AMD EPYC (1 thread per process)")
    assert "](../benchmarks/reference/amd-epyc-2core/scaling/report.md)" in block
    assert "| pytorch | 40,960 | 65,536 | 1.60x | 80% |" in block
