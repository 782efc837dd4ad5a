"""The README as a newcomer reads it: short, the train-on-my-text commands early, its
links alive, its headline table the newest committed quick reference's, and its
Quickstart's commands running as written, in a copy of the working tree (so its
checkpoints and logs stay out of this one) with a small `my.txt`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charrnn.common.paths import ROOT, VENVS
from charrnn.common.text import default_corpus_path
from tests.conftest import CURRENT_ENV
from tests.markdown import unpad

README = ROOT / "README.md"
MAX_LINES = 195  # 150, and the two shipped models' table and samples (issue 30)
TRAIN_WITHIN = 60  # lines: where a newcomer must have met the train-on-my-text command
MY_TEXT_CHARS = 60_000  # 13 training batches of 64 x 64 and one for validation


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the README's `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme(), re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def commands(text: str) -> list[str]:
    """The `python ...` lines of a section's bash blocks, comments dropped."""
    lines = [line.split("  #")[0].strip() for block in blocks(text, "bash")
             for line in block.splitlines()]
    return [line for line in lines if line.startswith("python ")]


def test_readme_is_short_and_starts_with_the_user():
    lines = readme().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"
    first = "\n".join(lines[:TRAIN_WITHIN])
    assert "## Install" in first and "## Quickstart" in first
    assert re.search(r"train --text-path my\.txt", first), "no train-on-my-text command early"
    assert "train --restore" in first


def test_readme_links_exist():
    for target in re.findall(r"\]\(([^)#\s]+)", readme()):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_headline_table_is_the_newest_quick_reference():
    pytest.importorskip("pandas")
    from benchmarks import report
    from benchmarks.records import REFERENCE_ROOT

    newest = next(iter(report.reference_dirs(REFERENCE_ROOT).values()))
    quick = [d for d in newest if d.name == "quick"]
    assert quick, f"the newest reference kind ({newest[0].parent.name}) has no quick profile"
    _, frameworks = report.load_records(quick[0])
    expected = unpad(report.headline_table(report.summary_table(frameworks)))
    assert expected in unpad(section("The benchmark")), (
        f"README's headline table is not {quick[0].relative_to(ROOT)}'s; paste:\n{expected}")


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the working tree (tracked and unignored files) that shares this one's
    environments, with the user's text: the first 60,000 characters of tinyshakespeare."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    copy = tmp_path / "char-rnn-bench"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    for venv in VENVS.values():
        if venv.exists():
            (copy / venv.name).symlink_to(venv)
    text = default_corpus_path().read_text(encoding="utf-8")[:MY_TEXT_CHARS]
    (copy / "my.txt").write_text(text, encoding="utf-8")
    return copy


def argv(command: str) -> list[str]:
    """A README command with its `python` this interpreter (any works: the scripts
    re-execute themselves in their framework's environment)."""
    words = shlex.split(command)
    assert words[0] == "python"
    return [sys.executable, *words[1:]]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv(command), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.skipif(CURRENT_ENV != "modern", reason="run once, from the modern environment")
def test_quickstart_runs_as_written(checkout):
    """Generate from the shipped model; train on my.txt, stopped with Ctrl-C after its
    first checkpoint; resume; generate from it; the Python lines."""
    text = section("Quickstart")
    shipped, train, resume, generate = commands(text)
    assert "generate" in shipped and "train --text-path my.txt" in train
    assert "--restore" in resume and "generate" in generate

    assert run(shipped, checkout).stdout.startswith("KING")

    words = shlex.split(train)
    checkpoint = checkout / words[words.index("--checkpoint-path") + 1]
    child = subprocess.Popen(argv(train), cwd=checkout, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (checkpoint / "model.safetensors").exists() and child.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)  # Ctrl-C
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 130, output[-2000:]
    assert "continue with --restore" in output

    resumed = run(resume, checkout)
    assert "resuming" in resumed.stdout + resumed.stderr
    assert "done:" in resumed.stdout + resumed.stderr
    words = shlex.split(generate)
    seed = words[words.index("--seed") + 1]
    assert run(generate, checkout).stdout.startswith(seed)

    (code,) = blocks(text, "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("The ")
