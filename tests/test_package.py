"""The installable package: the wheel in a fresh virtual environment with the base
requirements only, its `charrnn` command (and the page `charrnn serve` serves), and the
Python API (generate, stream, write, train, fine-tune with new characters, save) at tiny
sizes.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from charrnn import CharRnnError, TextGenerator
from charrnn.common import registry
from charrnn.common.paths import PRETRAINED_PATH, ROOT, venv_python
from charrnn.common.weights import load_portable
from tests.conftest import TEXT

GENERATE = ["generate", "--seed", "KING", "--length", "60", "--random-seed", "7"]


def script_output(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def reference_text() -> str:
    """What the original suite's NumPy script prints for GENERATE."""
    return script_output("numpy_model.py", *GENERATE)


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_installs_in_a_fresh_venv_and_runs_outside_the_repository(editable, reference_text,
                                                                   tmp_path):
    """`pip install .` (through a built wheel) and `pip install -e .`, into a new virtual
    environment with nothing but the base requirements; then, from another directory,
    the API and the `charrnn` command give the script's text."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    if editable:
        target = ["-e", str(ROOT)]
    else:
        wheels = tmp_path / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "-w", str(wheels), str(ROOT)],
                       check=True, timeout=300, capture_output=True)
        target = [str(next(wheels.glob("char_rnn_bench-*.whl")))]
    proc = subprocess.run([*pip, *target], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=outside, capture_output=True, text=True,
                              timeout=300)

    api = run(str(venv / "bin" / "python"), "-c",
              "from charrnn import TextGenerator\n"
              "print(TextGenerator().generate(prefix='KING', length=60, seed=7)[0])")
    assert api.returncode == 0, api.stderr[-2000:]
    assert api.stdout == reference_text
    command = run(str(venv / "bin" / "charrnn"), *GENERATE)
    assert command.returncode == 0, command.stderr[-2000:]
    assert command.stdout == reference_text
    assert "the shipped pretrained model" in command.stderr
    refused = run(str(venv / "bin" / "charrnn"), "--framework", "pytorch", *GENERATE)
    if refused.returncode != 0:  # torch is not among the base requirements
        assert refused.stderr.strip().splitlines() == [
            "charrnn: error: framework pytorch: torch is not installed in this environment "
            "(pip install 'char-rnn-bench[torch]') (see --help)"]
    assert sorted(p.name for p in outside.iterdir()) == []  # generation wrote nothing here
    assert_serves_the_page(venv / "bin" / "charrnn", outside)


def assert_serves_the_page(charrnn: Path, cwd: Path) -> None:
    """`charrnn serve` of an installed package: the page and the shipped model are its
    package data (tests/test_web.py runs the page itself)."""
    proc = subprocess.Popen([str(charrnn), "serve", "--port", "0"], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        page = proc.stdout.readline().split(" at ")[1].split()[0]  # http://127.0.0.1:N/web/
        for name in ("", "app.js", "model.js", "style.css"):
            with urllib.request.urlopen(page + name) as response:
                assert response.status == 200, name
        with urllib.request.urlopen(page + "../pretrained/tinyshakespeare.safetensors") as model:
            assert model.read() == PRETRAINED_PATH.read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_python_m_charrnn_is_the_scripts_command_line(reference_text):
    assert script_output("-m", "charrnn", *GENERATE) == reference_text
    assert script_output("-m", "charrnn", "--framework", "numpy", *GENERATE) == reference_text
    # A variant row, in the other environment: re-executed there, its own class.
    if registry.unavailable_reason("chainer[nstep]") and not venv_python("legacy").exists():
        pytest.skip("chainer is in the legacy environment, which is not set up")
    proc = subprocess.run([sys.executable, "-m", "charrnn", "--framework", "chainer[nstep]",
                           *GENERATE, "--threads", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == reference_text


def test_api_generate_stream_and_write(reference_text, tmp_path):
    gen = TextGenerator()
    assert gen.generate(prefix="KING", length=60, seed=7) == [reference_text.rstrip("\n")]
    assert "".join(gen.stream(prefix="KING", length=60, seed=7)) == reference_text.rstrip("\n")
    pieces = gen.stream(prefix="KING", length=100_000, seed=7)
    assert [next(pieces) for _ in range(3)] == ["KING", " ", "t"]
    pieces.close()  # leaving early stops the generation
    texts = gen.generate_to_file(tmp_path / "out.txt", n=2, prefix="All:", length=20, seed=1,
                                 temperature=0.5, top_k=0, top_p=0.9)
    assert len(texts) == 2 and all(t.startswith("All:") and len(t) == 24 for t in texts)
    assert (tmp_path / "out.txt").read_text() == "".join(
        f"--- sample {k + 1} ---\n{t}\n" for k, t in enumerate(texts))
    assert gen.config["rnn_size"] == 128 and gen.vocab[0] == "" and len(gen.vocab) == 98
    with pytest.raises(CharRnnError, match="outside the model's vocabulary"):
        gen.generate(prefix="K\u20ac")
    with pytest.raises(CharRnnError, match="unknown framework"):
        TextGenerator(framework="nope")


def test_api_trains_fine_tunes_with_new_characters_and_saves(tmp_path):
    tiny = {"seq_len": 16, "batch_size": 4, "embedding_size": 8, "rnn_size": 16,
            "sample_length": 0, "log_path": str(tmp_path / "run.log")}
    gen = TextGenerator.train_on_text(TEXT, checkpoint_path=tmp_path / "ck", num_epochs=1,
                                      **tiny)
    assert (tmp_path / "ck.txt").read_text() == TEXT
    assert gen.metadata["step"] == "29" and gen.config["rnn_size"] == 16
    known = gen.vocab
    new_text = TEXT.replace("a", "\u00e4") + "\u00df\u00e4\n"
    before = gen.portable.weights
    gen.fine_tune_on_text(new_text, checkpoint_path=tmp_path / "tuned", num_epochs=1,
                          **{**tiny, "log_path": str(tmp_path / "tune.log")})
    # The known ids keep their characters; the new ones follow, sorted.
    assert gen.vocab == known + ["\u00df", "\u00e4"]
    assert gen.generate(prefix="\u00e4", length=5, seed=0)[0].startswith("\u00e4")
    assert not np.allclose(gen.portable.weights["lstm.0.w_ih"], before["lstm.0.w_ih"])
    with pytest.raises(CharRnnError, match="--rnn-size 16, not the --rnn-size 32"):
        gen.fine_tune_on_text(TEXT, checkpoint_path=tmp_path / "x", rnn_size=32)
    with pytest.raises(CharRnnError, match="unknown training setting"):
        TextGenerator.train_on_text(TEXT, checkpoint_path=tmp_path / "y", epochs=1)
    # A new run into a run's checkpoint: refused, its text and weights as they were.
    weights = (tmp_path / "tuned" / "model.safetensors").read_bytes()
    with pytest.raises(CharRnnError, match="tuned already holds a checkpoint"):
        gen.fine_tune_on_text("another text\n" * 200, checkpoint_path=tmp_path / "tuned")
    assert (tmp_path / "tuned.txt").read_text() == new_text
    assert (tmp_path / "tuned" / "model.safetensors").read_bytes() == weights
    saved = gen.save(tmp_path / "mine.safetensors")
    again = TextGenerator(saved)
    assert again.vocab == gen.vocab
    assert again.generate(prefix="All", length=30, seed=3) == gen.generate(prefix="All",
                                                                            length=30, seed=3)


def test_grown_vocabulary_keeps_the_known_characters_probabilities():
    """docs/SPEC.md section 10, "Fine-tuning": new rows start as unlikely as the rarest
    known character; the known characters' logits are those of the unchanged model."""
    from charrnn.common.weights import grow_vocab
    portable = load_portable(PRETRAINED_PATH)
    grown = grow_vocab(portable, "KING \u00e9\u00e0", seed=0)
    assert grown.vocab.chars == portable.vocab.chars + ["\u00e0", "\u00e9"]
    assert grown.config.vocab_size == portable.config.vocab_size + 2
    w, b = grown.weights["dense.w"], grown.weights["dense.b"]
    assert not w[-2:].any() and (b[-2:] == portable.weights["dense.b"][1:].min()).all()
    np.testing.assert_array_equal(grown.weights["embedding"][:98], portable.weights["embedding"])
    assert grow_vocab(portable, "KING", seed=0) is portable
    assert Path(PRETRAINED_PATH).parent.name == "pretrained"  # package data


def test_plot_command_runs_from_a_python_without_matplotlib(tmp_path):
    """`python -m benchmarks.plot`, as docs/USAGE.md shows it, from a Python that lacks
    matplotlib (the legacy environment's): it re-executes under the one that has it."""
    python = venv_python("legacy")
    if not python.exists() or not venv_python("modern").exists():
        pytest.skip("both environments are needed (make setup)")
    lacks = subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True)
    if lacks.returncode == 0:
        pytest.skip(f"{python} has matplotlib")
    log = PRETRAINED_PATH.with_suffix(".jsonl")
    proc = subprocess.run([str(python), "-m", "benchmarks.plot", str(log), "--output",
                           str(tmp_path / "loss.png")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "loss.png").stat().st_size > 10_000
