"""Initial weights and the portable `.safetensors` format (docs/SPEC.md sections 4 and 5).

Every framework starts from `init_weights` and reads and writes the same
canonical layout (PyTorch's: gate order i, f, g, o; kernels (4H, in)), so a
model trained in one framework generates text in any other.

    >>> from common.config import ModelConfig
    >>> w = init_weights(ModelConfig(vocab_size=10, embedding_size=4, rnn_size=8), seed=0)
    >>> sorted(w)[:3], w["lstm.0.w_hh"].shape
    (['dense.b', 'dense.w', 'embedding'], (32, 8))
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from charrnn.common.config import ModelConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_path, write_failure
from charrnn.common.text import Vocab

FORMAT = "char-rnn-portable/1"
REQUIRED_METADATA = ("format", "config", "vocab")

Weights = dict[str, np.ndarray]  # canonical name -> float32 array



def in_out_layout(name: str, a: np.ndarray) -> np.ndarray:
    """Canonical <-> the (in, out) layout of TensorFlow, Keras and Flax, either way (a
    transpose is its own inverse): they hold the matrices w_ih, w_hh and dense.w as
    (in, out), the canonical (out, in) transposed; embedding and biases are the same."""
    return a.T if name.endswith((".w_ih", ".w_hh", "dense.w")) else a


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int,
                   shape: tuple[int, ...]) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal rows (rows <= cols), via QR."""
    a = rng.standard_normal((cols, rows))
    q, r = np.linalg.qr(a)  # q: (cols, rows) with orthonormal columns
    q *= np.sign(np.diag(r))  # make the decomposition unique
    return q.T


def init_weights(config: ModelConfig, seed: int) -> Weights:
    """The canonical initial weights, one routine for every framework (docs/SPEC.md section 4).

    Drawn in float64 in a fixed order from one seeded generator, then cast to
    float32, so the same seed gives the same bits on any machine with NumPy. The cell
    (section 8) sets the kernels' heights and the bias names.
    """
    rng = np.random.default_rng(seed)
    H, V, E = config.rnn_size, config.vocab_size, config.embedding_size
    # N(0, 1), PyTorch's nn.Embedding default: Keras' U(-0.05, 0.05) gives inputs so small
    # that the first LSTM layer idles for epochs (val loss 1.928 against 1.759 after 10).
    w = {"embedding": rng.standard_normal((V, E))}
    G = config.gates  # 4 (lstm), 3 (gru), 1 (rnn)
    for k in range(config.num_layers):
        input_size, layer = (E if k == 0 else H), config.layer(k)
        # Glorot on the Keras-layout (in, G*H) kernel, stored transposed as (G*H, in).
        w[f"{layer}.w_ih"] = glorot_uniform(rng, input_size, G * H, (input_size, G * H)).T
        # Orthogonal (H, G*H) recurrent kernel with orthonormal rows, stored as (G*H, H).
        w[f"{layer}.w_hh"] = orthogonal_rows(rng, H, G * H).T
        for bias in config.bias_names():
            w[f"{layer}.{bias}"] = np.zeros(G * H)
        if config.cell == "lstm":
            w[f"{layer}.bias"][H:2 * H] = 1.0  # forget gate (order i, f, g, o)
    w["dense.w"] = glorot_uniform(rng, H, V, (H, V)).T  # (V, H)
    w["dense.b"] = np.zeros(V)
    return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in w.items()}


@dataclass
class Portable:
    """The contents of one portable file: weights, model config, vocabulary, metadata."""

    weights: Weights
    config: ModelConfig
    vocab: Vocab
    metadata: dict[str, str] = field(default_factory=dict)


def check_weights(weights: Weights, config: ModelConfig, source: str) -> Weights:
    """Return `weights` as float32 after checking every name and shape against `config`."""
    expected = config.param_shapes()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise CharRnnError(f"{source}: weights do not match the config "
                           f"(missing {missing or 'none'}, unexpected {extra or 'none'})")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CharRnnError(f"{source}: {name} has shape {tuple(weights[name].shape)}, "
                               f"the config needs {shape}")
    out = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in expected}
    bad = [name for name, a in out.items() if not np.all(np.isfinite(a))]
    if bad:
        raise CharRnnError(f"{source}: non-finite values in {bad}")
    return out


def penalty(weights: Weights, config: ModelConfig, l1: float, l2: float) -> float:
    """l1 * sum|W| + l2 * sum W^2 over the kernels --l1 and --l2 penalise (section 9)."""
    total = 0.0
    for name in config.kernel_names():
        w = weights[name].astype(np.float64)
        total += l1 * float(np.abs(w).sum()) + l2 * float(np.square(w).sum())
    return total


def save_portable(path: str | os.PathLike, weights: Weights, config: ModelConfig, vocab: Vocab,
                  **metadata) -> None:
    """Write the portable file atomically. `metadata` values are stored as strings
    (SPEC: framework, framework_version, epoch, step, train_loss, val_loss)."""
    weights = check_weights(weights, config, str(path))
    if vocab.size != config.vocab_size:
        raise CharRnnError(f"{path}: vocabulary has {vocab.size} ids, config {config.vocab_size}")
    meta = {"format": FORMAT, "config": config.to_json(),
            "vocab": json.dumps(vocab.to_list(), ensure_ascii=False)}
    meta.update({k: "" if v is None else str(v) for k, v in metadata.items()})
    try:
        with atomic_path(path, suffix=".safetensors") as tmp:
            safetensors.numpy.save_file(weights, str(tmp), metadata=meta)
    except Exception as exc:  # safetensors reports a full disk as its own error type
        raise write_failure(path, exc) from None


def load_portable(path: str | os.PathLike) -> Portable:
    """Read and validate a portable file; any problem is one CharRnnError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CharRnnError(f"{path}: portable weights file not found")
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CharRnnError(f"{path}: not a readable .safetensors file "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                           ) from None
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise CharRnnError(f"{path}: missing metadata {missing}; not a char-rnn portable file")
    if meta["format"] != FORMAT:
        raise CharRnnError(f"{path}: format {meta['format']!r}, expected {FORMAT!r}")
    try:
        config = ModelConfig.from_json(meta["config"])
        vocab = Vocab.from_list(json.loads(meta["vocab"]))
    except (ValueError, TypeError) as exc:
        raise CharRnnError(f"{path}: unreadable config or vocab metadata ({exc})") from None
    if vocab.size != config.vocab_size:
        raise CharRnnError(f"{path}: vocabulary has {vocab.size} ids, config {config.vocab_size}")
    weights = check_weights(weights, config, str(path))
    return Portable(weights=weights, config=config, vocab=vocab, metadata=dict(meta))


def grow_vocab(portable: Portable, text: str, seed: int) -> Portable:
    """`portable` with the characters of `text` it lacks added to its vocabulary, for
    fine-tuning on a text with new characters (docs/SPEC.md section 10, "Fine-tuning").

    The known ids keep their meaning; the new characters take the ids after them, in
    sorted order. Their embedding rows are drawn N(0, 1) from `seed`, as a new model's
    are; their dense rows are zero and their dense biases the smallest known one, so
    each new character starts as unlikely as the rarest known character and the known
    characters' probabilities are those of the unchanged model, renormalised."""
    new = sorted(set(text) - set(portable.vocab.chars))
    if not new:
        return portable
    vocab = Vocab(portable.vocab.chars + new)
    config = dataclasses.replace(portable.config, vocab_size=vocab.size)
    rng = np.random.default_rng(seed)
    weights = dict(portable.weights)
    rows = rng.standard_normal((len(new), config.embedding_size)).astype(np.float32)
    weights["embedding"] = np.concatenate([weights["embedding"], rows])
    weights["dense.w"] = np.concatenate(
        [weights["dense.w"], np.zeros((len(new), config.rnn_size), np.float32)])
    weights["dense.b"] = np.concatenate(
        [weights["dense.b"], np.full(len(new), weights["dense.b"][1:].min(), np.float32)])
    return Portable(weights, config, vocab, dict(portable.metadata))
