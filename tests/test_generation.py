"""Generation is the same everywhere: greedy and seeded samples match the NumPy reference
from the same weights; the shipped pretrained model is the fallback; output streams."""

from __future__ import annotations

import subprocess
import sys

import pytest

from charrnn.common import registry
from charrnn.common.paths import PRETRAINED_PATH
from tests.conftest import ROOT, framework_params, require
from tests.test_cli import ok, run

SEED = "KING RICHARD:\n"


@pytest.fixture(scope="module")
def reference_outputs():
    """NumPy's greedy and sampled continuations of SEED from the pretrained model."""
    if not PRETRAINED_PATH.exists():
        pytest.skip(f"{PRETRAINED_PATH} is not there")
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    from tests.cli_cases import run_cases
    results = run_cases(NumpyCharRNN, generate_cases())
    return [ok(r)["stdout"] for r in results]


def generate_cases():
    common = ["generate", "--checkpoint-path", str(PRETRAINED_PATH), "--seed", SEED,
              "--length", "200"]
    return [{"argv": [*common, "--temperature", "0"]},
            {"argv": [*common, "--temperature", "0.8", "--top-n", "5", "--random-seed", "5"]},
            {"argv": [*common, "--temperature", "1", "--top-p", "0.9", "--top-n", "0",
                      "--random-seed", "5"]}]


@pytest.mark.parametrize("name", framework_params())
def test_same_text_as_reference(name, reference_outputs, tmp_path):
    outputs = [ok(r)["stdout"] for r in run(name, generate_cases(), tmp_path)]
    greedy, sampled, nucleus = outputs
    assert greedy == reference_outputs[0], "greedy (--temperature 0) output differs"
    assert len(greedy) == len(SEED) + 200 + 1
    assert sampled == reference_outputs[1], "seeded top-n sample differs"
    assert nucleus == reference_outputs[2], "seeded top-p sample differs"


def test_seeded_sampling_is_reproducible_and_seed_dependent(reference_outputs, tmp_path):
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    from tests.cli_cases import run_cases
    cases = generate_cases()[1:2] * 2
    cases.append({"argv": [*cases[0]["argv"][:-1], "6"]})
    a, b, c = (ok(r)["stdout"] for r in run_cases(NumpyCharRNN, cases))
    assert a == b == reference_outputs[1]
    assert a != c


@pytest.mark.parametrize("name", framework_params())
def test_pretrained_fallback(name, monkeypatch, tmp_path):
    """With no checkpoint of its own, generate and repl use the shipped model and say so."""
    if not PRETRAINED_PATH.exists():
        pytest.skip(f"{PRETRAINED_PATH} is not there")
    if registry.unavailable_reason(name):
        pytest.skip("runs in-process only (the fallback path is shared code)")
    model_cls = require(name)
    monkeypatch.setattr("charrnn.common.generate.default_checkpoint_path",
                        lambda framework: tmp_path / "no_checkpoint_here")
    from tests.cli_cases import run_cases
    results = run_cases(model_cls, [{"argv": ["generate", "--seed", "KING", "--length", "30"]},
                                    {"argv": ["repl", "--length", "10"], "stdin": "ROMEO:\n"}])
    for result in results:
        ok(result)
        assert "shipped pretrained model" in result["stderr"]
    assert results[0]["stdout"].startswith("KING")
    assert results[1]["stdout"].startswith("ROMEO:")


def test_generate_streams_characters():
    """Characters reach a pipe while generation is still running (flushed per character)."""
    if not PRETRAINED_PATH.exists():
        pytest.skip(f"{PRETRAINED_PATH} is not there")
    proc = subprocess.Popen([sys.executable, str(ROOT / "numpy_model.py"), "generate",
                             "--checkpoint-path", str(PRETRAINED_PATH), "--seed", "KING",
                             "--length", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        first = proc.stdout.read(20)  # seed + 16 generated characters
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert first.startswith(b"KING") and len(first) == 20
    assert still_running, "the whole text arrived at once: output is not streamed"


def test_model_by_name_is_the_shipped_file(reference_outputs):
    """`--model default` is the shipped file by name, in the CLI and the API; beside
    --checkpoint-path, or unknown, it is refused in one line."""
    from charrnn.api import TextGenerator
    from charrnn.common.errors import CharRnnError
    from charrnn.frameworks.numpy_model import NumpyCharRNN
    from tests.cli_cases import run_cases
    argv = ["generate", "--model", "default", "--seed", SEED, "--length", "200",
            "--temperature", "0"]
    named, both = run_cases(NumpyCharRNN, [
        {"argv": argv}, {"argv": [*argv, "--checkpoint-path", str(PRETRAINED_PATH)]}])
    assert ok(named)["stdout"] == reference_outputs[0]
    assert "the shipped pretrained model 'default'" in named["stderr"]
    assert both["code"] == 2 and "give one of them, not both" in both["stderr"]
    assert TextGenerator(model="default").portable.metadata == TextGenerator().portable.metadata
    with pytest.raises(CharRnnError, match="no shipped model 'huge'"):
        TextGenerator(model="huge")
