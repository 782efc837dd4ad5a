"""Sharded benchmark runs (`run_all --shard K/N`) and merged reports (`benchmarks.report
DIR DIR ...`): the shards of a tiny real run (numpy, numpy_model.py registered again under
another name, and a script that fails) together hold the unsharded run's records,
--resume works within a shard, a merge refuses other settings, and records of two
machine kinds are never ranked or divided across kinds (on saved records:
tests/data/bench/loaded, described in tests/test_benchmarks.py, given a second machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charrnn.common import registry
from tests.conftest import TEXT
from tests.markdown import unpad

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks import records, report, run_all  # noqa: E402
from tests.test_benchmarks import DATA, framework_records, runner  # noqa: E402

OTHER_MACHINE = {"cpu": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "cores": 8,
                 "usable_cores": 8}


def keys(results_dir: Path) -> set[tuple]:
    """(framework, repeat, where, status) of each framework record the report reads."""
    _, frameworks = report.load_records(results_dir)
    return {(r["framework"], r["repeat"], records.record_where(r), r["status"])
            for r in report._records(frameworks)}


# ---------------------------------------------------------------------------------------
# Which jobs a shard runs
# ---------------------------------------------------------------------------------------


def test_shards_split_the_whole_ordered_list_before_resume(capsys):
    entries = [registry.Entry(name, "numpy_model", "any", "numpy") for name in "abc"]
    every = [(j.row.name, j.repeat) for j in run_all.pending(entries, 2, [])]
    assert every == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]
    shards = [[(j.row.name, j.repeat) for j in run_all.pending(
        entries, 2, [], shard=run_all.parse_shard(f"{k}/4"))] for k in range(1, 5)]
    assert shards == [[("a", 0), ("b", 1)], [("b", 0), ("c", 1)], [("c", 0)], [("a", 1)]]
    # --resume leaves out what is recorded, but never hands a job to another shard.
    done = [{"kind": "framework", "framework": "a", "repeat": 0, "status": "ok"}]
    resumed = run_all.pending(entries, 2, done, shard=run_all.Shard(1, 4))
    assert [(j.row.name, j.repeat) for j in resumed] == [("b", 1)]
    assert "a (repeat 1): already recorded" in capsys.readouterr().err
    # World sizes are part of the list, after cells and points, before the frameworks.
    jobs = run_all.pending(entries[:2], 1, [], world_sizes=(1, 2), shard=run_all.Shard(2, 2))
    assert [j.label(1) for j in jobs] == ["b with 1 process", "b with 2 processes"]


@pytest.mark.parametrize("bad", ["0/2", "3/2", "2", "1/0", "a/b", "1/2/3", "-1/2", "²/3"])
def test_bad_shard_is_one_line(bad):
    with pytest.raises(SystemExit) as exc:
        run_all.parse_args([f"--shard={bad}"])
    message = str(exc.value)
    assert message.startswith(f"error: --shard {bad}: expected K/N") and "\n" not in message


def test_shard_has_its_own_default_out_and_dry_run(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 5, encoding="utf-8")  # one batch of the default 64 x 64
    flags = ["--text-path", str(corpus), "--frameworks", "numpy,pytorch", "--repeats", "3"]
    plan = run_all.make_plan(run_all.parse_args([*flags, "--shard", "2/3"]))
    assert plan.out == records.RESULTS_ROOT / "custom" / "shard-2-of-3"
    assert run_all.main([*flags, "--shard", "2/3", "--dry-run"]) == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# ")]
    assert headers == ["# pytorch (repeat 1)", "# numpy (repeat 3)"]  # jobs 1 and 4 of 0-5
    # A shard beyond the list runs nothing and writes nothing.
    out = tmp_path / "empty"
    assert run_all.main([*flags, "--shard", "7/7", "--out", str(out)]) == 0
    assert "no runs (the whole run has 6)" in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------------------------------
# A real tiny run, unsharded and in two shards
# ---------------------------------------------------------------------------------------


def test_two_shards_merged_equal_the_unsharded_run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    # Three jobs a round, two rounds: [numpy, again, broken] x 2, every other one a shard's.
    # "again" runs numpy_model.py under another name (PyTorch would take 12 s a run here).
    scripts = {"broken": tmp_path / "broken.py", "again": tmp_path / "again.py"}
    scripts["broken"].write_text('import sys\nsys.exit("error: deliberately broken")\n')
    scripts["again"].write_text("import os, sys\nos.execv(sys.executable, [sys.executable, "
                                "'numpy_model.py', *sys.argv[1:]])\n")
    frameworks = "numpy,again,broken"
    flags = ["--max-steps", "2", "--gen-length", "10",
             "--matmul-size", "64", "--matmul-repeats", "1", "--repeats", "2", "--no-report"]
    for out, shard in ((tmp_path / "whole", ()), (tmp_path / "s1", ("--shard", "1/2")),
                       (tmp_path / "s2", ("--shard", "2/2"))):
        proc = runner(out, corpus, frameworks, *flags, *shard, scripts=scripts)
        assert proc.returncode == 0, proc.stderr
    whole = keys(tmp_path / "whole")
    assert len(whole) == 6 and {k[3] for k in whole} == {"ok", "failed"}
    assert [(r["framework"], r["repeat"]) for r in framework_records(tmp_path / "s1")] == [
        ("numpy", 0), ("broken", 0), ("again", 1)]
    merged = tmp_path / "merged"
    report.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(merged)])
    assert keys(merged) == whole
    assert (merged / "report.md").exists() and (merged / "results.csv").exists()
    table = pd.read_csv(merged / "results.csv")
    assert sorted(table["framework"]) == ["again", "broken", "numpy"] and "machine" not in table
    # The default --out: merged/ beside the first directory.
    report.main([str(tmp_path / "s1"), str(tmp_path / "s2")])
    assert keys(tmp_path / "merged") == whole

    # --resume within a shard: nothing left to do, nothing rerun.
    before = framework_records(tmp_path / "s2")
    proc = runner(tmp_path / "s2", corpus, frameworks, *flags, "--shard", "2/2", "--resume",
                  scripts=scripts)
    assert proc.returncode == 0, proc.stderr
    assert "again (repeat 1): already recorded" in proc.stderr
    assert "numpy (repeat 1): already" not in proc.stderr  # shard 1's
    assert framework_records(tmp_path / "s2") == before


# ---------------------------------------------------------------------------------------
# Merging saved records
# ---------------------------------------------------------------------------------------


def copy_records(dest: Path, edit=None) -> Path:
    """tests/data/bench/loaded's records in `dest`, the run record changed by `edit`."""
    dest.mkdir(parents=True)
    lines = (DATA / "bench" / "loaded" / "records.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        if record["kind"] == "run" and edit:
            edit(record)
        out.append(json.dumps(record))
    (dest / "records.jsonl").write_text("\n".join(out) + "\n")
    return dest


def test_merge_refuses_other_settings(tmp_path):
    a = copy_records(tmp_path / "a")
    b = copy_records(tmp_path / "b", lambda r: r["settings"].update(gen_length=7, max_steps=9))
    with pytest.raises(SystemExit) as exc:
        report.main([str(a), str(b), "--out", str(tmp_path / "m")])
    message = str(exc.value)
    assert "other settings" in message and "(gen_length, max_steps)" in message
    assert "\n" not in message and not (tmp_path / "m").exists()
    with pytest.raises(SystemExit, match="is one of the merged directories"):
        report.main([str(a), str(a), "--out", str(a)])
    with pytest.raises(SystemExit, match="--out is where several"):
        report.main([str(a), "--out", str(tmp_path / "m")])


def test_one_directory_is_its_own_merge(tmp_path):
    """A merge of one machine's directories renders as one directory does."""
    a = copy_records(tmp_path / "a")
    merged = tmp_path / "m"
    report.main([str(a), str(copy_records(tmp_path / "b")), "--out", str(merged)])
    table, md, _ = report.build(a)
    merged_table, merged_md, _ = report.build(merged)
    # The same records twice: the later wins, so the same rows and figures.
    assert list(merged_table["framework"]) == list(table["framework"])
    assert merged_md.split("## Machine")[0] == md.split("## Machine")[0]


def test_two_machine_kinds_are_never_ranked_together(tmp_path):
    a = copy_records(tmp_path / "a")
    b = copy_records(tmp_path / "b", lambda r: r["machine"].update(OTHER_MACHINE))
    merged = tmp_path / "m"
    report.main([str(a), str(b), "--out", str(merged)])
    runs, frameworks = report.load_records(merged)
    assert list(frameworks["machine"]) == ["amd-epyc-2core"] * 4 + [
        "intel-xeon-platinum-8375c-8core"] * 4  # each record keeps its directory's machine
    table, md, _ = report.build(merged)
    md = unpad(md)
    # A row per framework and machine, each machine's rows together and ranked apart;
    # the medians are each machine's own (the same records here: the same figures).
    assert list(zip(table["machine"], table["framework"])) == [
        ("amd-epyc-2core", "numpy"), ("amd-epyc-2core", "pytorch"),
        ("intel-xeon-platinum-8375c-8core", "numpy"), ("intel-xeon-platinum-8375c-8core",
                                                       "pytorch")]
    assert list(table["repeats"]) == [2, 2, 2, 2]
    assert table["step_ms"].iloc[0] == table["step_ms"].iloc[2]
    assert "| framework | machine | version | s/epoch |" in md
    assert "| numpy | amd-epyc-2core | 2.4.6 |" in md
    assert "**amd-epyc-2core**: Machine: AMD EPYC" in md
    assert "**intel-xeon-platinum-8375c-8core**: Machine: Intel(R) Xeon(R)" in md
    assert "### intel-xeon-platinum-8375c-8core" in md
    # A reference is one machine's.
    with pytest.raises(SystemExit, match="a reference is one machine's"):
        report.main([str(merged), "--reference"])


def test_ratios_are_taken_within_a_machine():
    rows = [{"framework": "x", "machine": m, "cell": c, "step_ms": ms, "val_loss": 2.0,
             "duration_s": 1.0}
            for m, lstm, gru in (("fast-1core", 10.0, 8.0), ("slow-1core", 40.0, 20.0))
            for c, ms in (("lstm", lstm), ("gru", gru))]
    lines = unpad(report.cells_table(pd.DataFrame(rows))).splitlines()
    assert lines[0].startswith("| framework | machine | lstm step ms | gru step ms | gru / lstm")
    assert lines[2].startswith("| x | fast-1core | 10.0 | 8.0 | 0.80x |")
    assert lines[3].startswith("| x | slow-1core | 40.0 | 20.0 | 0.50x |")


def test_a_sweep_of_two_machine_kinds_is_refused(tmp_path):
    lines = (DATA / "sweep" / "records.jsonl").read_text().splitlines()
    for name, machine in (("a", None), ("b", OTHER_MACHINE)):
        (tmp_path / name).mkdir()
        out = []
        for line in lines:
            record = json.loads(line)
            if record["kind"] == "run" and machine:
                record["machine"].update(machine)
            out.append(json.dumps(record))
        (tmp_path / name / "records.jsonl").write_text("\n".join(out) + "\n")
    with pytest.raises(SystemExit, match="a sweep's report compares the frameworks"):
        report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
