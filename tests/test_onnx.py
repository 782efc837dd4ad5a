"""ONNX export (docs/ONNX.md): onnxruntime running the exported graphs gives the NumPy
reference's logits and states for every cell, and through the shared sampler the
reference's text; `export --format onnx` works from any framework's checkpoint.

Skipped where onnx or onnxruntime is not installed (the legacy environment)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from charrnn.common.config import ModelConfig, OptimConfig
from charrnn.common.generate import Generator
from charrnn.common.onnx_export import (
    INSTALL_HINT,
    OPSET,
    OnnxStepModel,
    export_onnx,
    read_metadata,
    session,
    step_path,
)
from charrnn.common.paths import PRETRAINED_PATH
from charrnn.common.text import Vocab
from charrnn.common.weights import Portable, init_weights, load_portable
from charrnn.frameworks.numpy_model import NumpyCharRNN
from tests.cli_cases import run_cases
from tests.conftest import ROOT, TEXT, TINY, ok, require, run
from tests.test_cli import portable_file
from tests.test_generation import SEED, generate_cases

# common.onnx_export imports both only when it runs; the tests need both.
onnx = pytest.importorskip("onnx", reason="onnx is not installed here (the onnx extra)")
ort = pytest.importorskip("onnxruntime",
                          reason="onnxruntime is not installed here (the onnx extra)")

TOLERANCE = 1e-5  # float32 logits and states, absolute


def perturbed_portable(cell: str, num_layers: int, seed: int = 0) -> Portable:
    """A small model whose every array, biases included, is away from its initial value,
    so a wrong gate order or bias placement cannot hide behind zeros."""
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=6, rnn_size=10,
                         num_layers=num_layers, cell=cell)
    rng = np.random.default_rng(seed)
    weights = {name: (a + 0.3 * rng.standard_normal(a.shape)).astype(np.float32)
               for name, a in init_weights(config, seed).items()}
    return Portable(weights, config, vocab, {"framework": "numpy"})


def random_state(config: ModelConfig, batch_size: int, rng: np.random.Generator):
    """A non-zero (h, c), each (num_layers, batch_size, rnn_size); c is zeros but for an
    LSTM (the suite's convention for GRU and RNN, docs/SPEC.md section 10)."""
    shape = (config.num_layers, batch_size, config.rnn_size)
    h = rng.uniform(-0.9, 0.9, shape).astype(np.float32)
    c = (rng.uniform(-2, 2, shape) if config.cell == "lstm" else np.zeros(shape)).astype(
        np.float32)
    return h, c


def feeds(config: ModelConfig, ids: np.ndarray, h: np.ndarray, c: np.ndarray) -> dict:
    out = {"ids": ids.astype(np.int64), "h": h}
    if config.cell == "lstm":
        out["c"] = c
    return out


def max_differences(onnx_out: list, logits, h, c, config: ModelConfig) -> dict[str, float]:
    """Largest absolute differences of onnxruntime's (logits, h[, c]) from the oracle's."""
    diffs = {"logits": np.abs(onnx_out[0] - logits).max(), "h": np.abs(onnx_out[1] - h).max()}
    if config.cell == "lstm":
        diffs["c"] = np.abs(onnx_out[2] - c).max()
    return {name: float(d) for name, d in diffs.items()}


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_graphs_equal_the_reference(cell, num_layers, tmp_path):
    portable = perturbed_portable(cell, num_layers)
    config = portable.config
    sequence_path, step_file = export_onnx(tmp_path / "model.onnx", portable)
    assert step_file == step_path(sequence_path) == tmp_path / "model.step.onnx"
    for path in (sequence_path, step_file):
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert [o.version for o in model.opset_import if o.domain == ""] == [OPSET]
        ops = {n.op_type for n in model.graph.node}
        assert {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell] in ops
    reference = NumpyCharRNN(config, portable.weights, OptimConfig())
    sequence, step = session(sequence_path), session(step_file)
    rng = np.random.default_rng(1)

    # The sequence graph: ids (B, T) from a non-zero state, at several B and T.
    for batch_size, seq_len in [(1, 1), (3, 7), (8, 33)]:
        ids = rng.integers(0, config.vocab_size, (batch_size, seq_len))
        h, c = random_state(config, batch_size, rng)
        logits, (h_ref, c_ref) = reference.forward(ids.astype(np.int32), (h, c))
        out = sequence.run(None, feeds(config, ids, h, c))
        assert out[0].shape == (batch_size, seq_len, config.vocab_size)
        diffs = max_differences(out, logits, h_ref, c_ref, config)
        assert max(diffs.values()) < TOLERANCE, (batch_size, seq_len, diffs)

    # The step graph: several steps in a row, each state fed back, from a non-zero state.
    for batch_size in (1, 5):
        h, c = random_state(config, batch_size, rng)
        state = (h, c)
        for _ in range(4):
            ids = rng.integers(0, config.vocab_size, batch_size)
            logits, state_ref = reference.step(ids.astype(np.int32), state)
            out = step.run(None, feeds(config, ids, *state))
            assert out[0].shape == (batch_size, config.vocab_size)
            diffs = max_differences(out, logits, *state_ref, config)
            assert max(diffs.values()) < TOLERANCE, (batch_size, diffs)
            state = (out[1], out[2] if cell == "lstm" else state[1])


def test_metadata_carries_the_vocabulary_and_config(tmp_path):
    portable = perturbed_portable("gru", 2)
    _, step_file = export_onnx(tmp_path / "m.onnx", portable)
    props = session(step_file).get_modelmeta().custom_metadata_map
    info = read_metadata(props, str(step_file))
    assert info.config == portable.config and info.vocab.to_list() == portable.vocab.to_list()
    assert info.graph == "step" and info.states == ("h",)
    assert json.loads(props["vocab"]) == portable.vocab.to_list()
    assert props["framework"] == "numpy"


@pytest.fixture(scope="module")
def pretrained_onnx(tmp_path_factory):
    """The shipped model exported to ONNX, and its portable file."""
    if not PRETRAINED_PATH.exists():
        pytest.skip(f"{PRETRAINED_PATH} is not there")
    portable = load_portable(PRETRAINED_PATH)
    _, step_file = export_onnx(tmp_path_factory.mktemp("onnx") / "ts.onnx", portable)
    return step_file, portable


def test_greedy_text_from_zeros_equals_the_reference(pretrained_onnx):
    step_file, portable = pretrained_onnx
    reference = NumpyCharRNN(portable.config, portable.weights, OptimConfig())
    texts = []
    for model in (OnnxStepModel(step_file), reference):
        generator = Generator(model, portable.vocab, warm_start=False)
        texts.append(generator.generate(SEED, 300, np.random.default_rng(0), temperature=0,
                                        num_samples=2))
    assert texts[0] == texts[1]
    assert len(texts[0][0]) == 300


def test_seeded_samples_equal_numpy_generate(pretrained_onnx):
    """The shared warm-up and sampler driven by onnxruntime's logits print what
    `numpy_model.py generate` prints: greedy, top-n and top-p, seeded."""
    step_file, portable = pretrained_onnx
    generator = Generator(OnnxStepModel(step_file), portable.vocab)
    cases = generate_cases()
    printed = [ok(r)["stdout"] for r in run_cases(NumpyCharRNN, cases)]
    settings = [dict(temperature=0), dict(temperature=0.8, top_k=5),
                dict(temperature=1, top_p=0.9, top_k=0)]
    for expected, kwargs in zip(printed, settings):
        text = generator.generate(SEED, 200, np.random.default_rng(5), **kwargs)[0]
        assert SEED + text + "\n" == expected, kwargs


def onnx_agrees_with(portable: Portable, sequence_path) -> None:
    """The exported sequence graph gives `portable`'s oracle logits and states."""
    config = portable.config
    rng = np.random.default_rng(2)
    ids = rng.integers(0, config.vocab_size, (4, 9))
    h, c = random_state(config, 4, rng)
    logits, (h_ref, c_ref) = NumpyCharRNN(config, portable.weights, OptimConfig()).forward(
        ids.astype(np.int32), (h, c))
    out = session(sequence_path).run(None, feeds(config, ids, h, c))
    assert max(max_differences(out, logits, h_ref, c_ref, config).values()) < TOLERANCE


@pytest.mark.parametrize("name", ["pytorch", "tensorflow"])
def test_cli_export_from_a_trained_checkpoint(name, corpus, tmp_path):
    require(name)
    ck, output = tmp_path / "ck", tmp_path / "out" / "model.onnx"
    results = run(name, [
        {"argv": ["train", "--text-path", str(corpus), *TINY, "--num-epochs", "1",
                  "--max-steps", "3", "--sample-length", "0", "--checkpoint-path", str(ck),
                  "--log-path", str(tmp_path / "run.log")]},
        {"argv": ["export", "--format", "onnx", "--checkpoint-path", str(ck),
                  "--output", str(output)]},
    ], tmp_path)
    for result in results:
        ok(result)
    assert f"wrote {output}" in results[1]["stderr"]
    assert f"wrote {step_path(output)}" in results[1]["stderr"]
    portable = load_portable(ck / "model.safetensors")
    onnx_agrees_with(portable, output)
    props = session(step_path(output)).get_modelmeta().custom_metadata_map
    assert props["framework"] == name and props["step"] == "3"
    model = OnnxStepModel(step_path(output))
    assert model.config == portable.config
    assert model.vocab.to_list() == portable.vocab.to_list()


def test_charrnn_command_exports_a_portable_file(tmp_path):
    """`charrnn export --format onnx` from any framework's portable file, in a process of
    its own; the default output is beside it."""
    source = portable_file(tmp_path / "gru.safetensors", cell="gru")
    proc = subprocess.run([sys.executable, "-m", "charrnn", "export", "--format", "onnx",
                           "--checkpoint-path", str(source)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    output = tmp_path / "numpy_model.onnx"
    assert proc.stderr.splitlines()[-2:] == [f"wrote {output}", f"wrote {step_path(output)}"]
    onnx_agrees_with(load_portable(source), output)


def test_api_export_onnx(tmp_path):
    if not PRETRAINED_PATH.exists():
        pytest.skip(f"{PRETRAINED_PATH} is not there")
    from charrnn import TextGenerator
    gen = TextGenerator()
    paths = gen.export_onnx(tmp_path / "ts.onnx")
    assert paths == (tmp_path / "ts.onnx", tmp_path / "ts.step.onnx")
    model = OnnxStepModel(paths[1])
    assert model.vocab.to_list() == gen.vocab and model.config == gen.portable.config


def test_export_refusals_are_one_line(monkeypatch, tmp_path):
    source = str(portable_file(tmp_path / "m.safetensors"))
    export = ["export", "--format", "onnx", "--checkpoint-path", source]
    bad_name, = run_cases(NumpyCharRNN, [{"argv": [*export, "--output",
                                                   str(tmp_path / "m.safetensors.out")]}])
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    no_onnx, = run_cases(NumpyCharRNN, [{"argv": [*export, "--output",
                                                  str(tmp_path / "x.onnx")]}])
    for result in (bad_name, no_onnx):
        assert result["code"] == 2 and result["exception"] is None
        assert len(result["stderr"].strip().splitlines()) == 1, result["stderr"]
    assert "an ONNX export is named NAME.onnx" in bad_name["stderr"]
    assert no_onnx["stderr"].strip() == f"error: {INSTALL_HINT}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_the_documented_loop_prints_what_generate_prints(pretrained_onnx, tmp_path):
    """docs/ONNX.md's greedy loop and scoring snippet, run as written beside an export of
    the shipped model, print `generate --cold-start --temperature 0`'s text."""
    text = (ROOT / "docs" / "ONNX.md").read_text()
    blocks = [block.split("```")[0] for block in text.split("```python\n")[1:]]
    greedy, = (b for b in blocks if 'ort.InferenceSession("ts.step.onnx"' in b)
    scoring, = (b for b in blocks if 'ort.InferenceSession("ts.onnx"' in b)
    export_onnx(tmp_path / "ts.onnx", pretrained_onnx[1])
    proc = subprocess.run([sys.executable, "-c", greedy + scoring], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected, = run_cases(NumpyCharRNN, [{"argv": [
        "generate", "--checkpoint-path", str(PRETRAINED_PATH), "--cold-start",
        "--temperature", "0", "--seed", "KING RICHARD:", "--length", "200"]}])
    lines = proc.stdout.splitlines(keepends=True)
    assert "".join(lines[:-1]) == ok(expected)["stdout"]
    assert lines[-1].endswith(" bits per character\n")
