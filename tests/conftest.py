"""Shared fixtures: a tiny corpus, tiny model flags, and framework parametrisation.

A framework that is not written yet, or whose libraries live in the other
environment, is skipped with the reason; `make test` runs this suite in both
environments, so every framework is tested in the one that has it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.common import registry
from charrnn.common.paths import ROOT
from tests.cli_cases import run_cases

CURRENT_ENV = "legacy" if Path(sys.prefix).name == ".venv-legacy" else "modern"

# Flags that make any CLI run take a second or two: tiny model, tiny batches.
TINY = ["--seq-len", "16", "--batch-size", "4", "--embedding-size", "8", "--rnn-size", "16",
        "--sample-length", "20"]

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die "
        "than to famish?\n\nAll:\nResolved. resolved.\n\n") * 12


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make `--dist loadgroup` group again. pytest-xdist 3.8 marks a test's group by
    appending "@group" to `item._nodeid`, which pytest 9.2 no longer reads (the node id
    comes from `item._id`), so every test was scheduled alone and a framework's graphs
    compiled on both workers. The id is set where pytest reads it, with the group name
    slugged ("keras[jax]" -> "keras-jax"): xdist reads "@" as a group only after the
    last "]"."""
    if not getattr(config.option, "loadgroup", False) or not items or not hasattr(items[0], "_id"):
        return
    from _pytest.nodeid import coerce_node_id
    for item in items:
        groups = sorted({re.sub(r"\W+", "-", str(mark.args[0])).strip("-")
                         for mark in item.iter_markers("xdist_group") if mark.args})
        if groups and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")


def in_this_env(name: str) -> bool:
    return registry.FRAMEWORKS[name].env in (CURRENT_ENV, "any")


def framework_params(env_only: bool = True, grouped: bool = False):
    """pytest params over registered frameworks (those of this environment by default).
    `grouped`: each framework's tests go to one pytest-xdist worker (`--dist loadgroup`),
    so a framework's graphs compile, and a Keras backend's worker process starts, once."""
    return [pytest.param(name, id=name,
                         marks=[pytest.mark.xdist_group(name)] if grouped else [])
            for name in registry.names() if not env_only or in_this_env(name)]


def require(name: str):
    """The model class, or skip with the reason this process cannot run it."""
    try:
        return registry.load(name)
    except registry.Unavailable as exc:
        pytest.skip(str(exc))


def run_worker(name: str, module: str, *args: str,
               timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m <module> <name> args` in the framework's own environment and variables."""
    entry = registry.FRAMEWORKS[name]
    python = entry.python()
    if not python.exists():
        pytest.skip(f"{python} does not exist (run make setup)")
    return subprocess.run([str(python), "-m", module, name, *args], cwd=ROOT,
                          env=entry.process_env(), capture_output=True, text=True,
                          timeout=timeout)


def run(name: str, cases: list[dict], tmp_path) -> list[dict]:
    """Run CLI cases for framework `name`, in-process or in a worker."""
    entry = registry.FRAMEWORKS[name]
    reason = registry.unavailable_reason(name)
    if reason and entry.env_vars and entry.script.exists():
        spec = tmp_path / "cases.json"
        spec.write_text(json.dumps(cases))
        proc = run_worker(name, "tests.cli_cases", str(spec))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        results = run_cases(require(name), cases)
    for result in results:
        assert result["exception"] is None, result["exception"]
    return results


def ok(result: dict) -> dict:
    assert result["code"] == 0, (f"{result['argv']}: exit {result['code']}\n"
                                 f"{result['stderr'][-3000:]}")
    return result


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path
