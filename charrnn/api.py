"""The Python API: load a model, generate, stream, train and fine-tune, save.

    from charrnn import TextGenerator

    gen = TextGenerator()                        # the shipped tinyshakespeare model, on NumPy
    print(gen.generate(prefix="KING", length=200, temperature=0.8, seed=7)[0])
    for piece in gen.stream(prefix="ROMEO:", length=300):
        print(piece, end="", flush=True)

    gen = TextGenerator.train_from_file("my.txt", num_epochs=5, rnn_size=256)
    gen.fine_tune_from_file("more.txt", num_epochs=1)   # new characters grow the vocabulary
    gen.save("my_model.safetensors")                    # any framework can load it
    gen.export_onnx("my_model.onnx")                    # + my_model.step.onnx (docs/ONNX.md)

Every call runs the same code as the command line (`common.generate`, `common.train`),
so `generate(prefix="KING", seed=7)` returns what `numpy_model.py generate --seed KING
--random-seed 7` prints. Errors are `CharRnnError`, with the CLI's one-line message.
"""

from __future__ import annotations

import dataclasses
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from charrnn.common import registry
from charrnn.common.checkpoint import PORTABLE_NAME, refuse_existing
from charrnn.common.config import TrainConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_write_text
from charrnn.common.framework import CharRNN
from charrnn.common.generate import Generator, load_for_generation, samples_text
from charrnn.common.paths import default_checkpoint_path
from charrnn.common.sampling import check_sampling
from charrnn.common.text import read_text
from charrnn.common.weights import Portable, grow_vocab, save_portable

DEFAULT_PREFIX = "\n"  # a new paragraph: where the log's samples start too


def model_class(framework: str) -> type[CharRNN]:
    """The CharRNN class of `framework` ("numpy", "pytorch", "keras[jax]", ...), or a
    CharRnnError saying why this Python cannot run it."""
    try:
        return registry.load(framework)
    except registry.Unavailable as exc:
        raise CharRnnError(f"framework {framework}: {exc}") from None


class TextGenerator:
    """A trained model, ready to generate, on the framework of your choice.

    `path`: a portable `.safetensors` file written by any framework, or a checkpoint
    directory; None loads a model shipped with the package, `model` by name ("default").
    `framework` runs it (default numpy, which needs nothing else); `device` and
    `threads` as on the CLI. `cold_start` starts every sample from the zero state
    instead of the warm one (docs/SPEC.md section 10, "Generation").
    """

    def __init__(self, path: str | Path | None = None, framework: str = "numpy", *,
                 device: str = TrainConfig.device, threads: int | None = None,
                 cold_start: bool = False, model: str | None = None):
        if path is not None and model is not None:
            raise CharRnnError(f"path {path} and model {model!r}: give one of them, not both")
        self.framework = framework
        self.device, self.threads = device, threads
        self._model_cls = model_class(framework)
        if path is None:
            model = model or "default"
        loaded = load_for_generation(self._model_cls, None if path is None else str(path),
                                     device, threads, not cold_start, model)
        self._generator: Generator = loaded.generator
        self.portable: Portable = loaded.portable
        self.source = loaded.source

    # ---- what it is ------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The model's sizes and cell (vocab_size, embedding_size, rnn_size, ...)."""
        return dataclasses.asdict(self.portable.config)

    @property
    def vocab(self) -> list[str]:
        """The characters by id ("" for the unknown id 0)."""
        return self.portable.vocab.to_list()

    @property
    def metadata(self) -> dict[str, str]:
        """The portable file's metadata: framework, epoch, step, losses."""
        return dict(self.portable.metadata)

    def __repr__(self) -> str:
        c = self.portable.config
        return (f"TextGenerator({c.num_layers} x {c.cell} {c.rnn_size}, vocab {c.vocab_size}, "
                f"on {self.framework}; {self.source})")

    # ---- generation ------------------------------------------------------------------
    def generate(self, n: int = 1, prefix: str = DEFAULT_PREFIX, length: int = 300, *,
                 temperature: float = 1.0, top_k: int = 3, top_p: float = 1.0,
                 seed: int | None = None) -> list[str]:
        """`n` texts, each `prefix` and the `length` characters generated after it, as
        one batch. `top_k` keeps the k most likely characters (0: all), `top_p` the
        smallest set reaching that probability; `temperature` 0 is greedy; `seed` makes
        the samples reproducible (the CLI's --random-seed)."""
        return [prefix + text for text in self._run(n, prefix, length, temperature, top_k,
                                                    top_p, seed, None)]

    def stream(self, prefix: str = DEFAULT_PREFIX, length: int = 300, *,
               temperature: float = 1.0, top_k: int = 3, top_p: float = 1.0,
               seed: int | None = None) -> Iterator[str]:
        """Yield the prefix, then each character as the model makes it. Leaving the
        loop early stops the generation."""
        pieces: queue.Queue = queue.Queue(maxsize=1024)
        stop = threading.Event()
        done = object()

        class _Closed(Exception):
            pass

        def on_chars(chars: list[str]) -> None:
            if stop.is_set():
                raise _Closed
            pieces.put(chars[0])

        def work() -> None:
            try:
                self._run(1, prefix, length, temperature, top_k, top_p, seed, on_chars)
            except _Closed:
                pass
            except BaseException as exc:  # handed to the reader, raised there
                pieces.put(exc)
            pieces.put(done)

        self._generator.check_seed(prefix)
        check_sampling(temperature, top_k, top_p)
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            yield prefix
            while (piece := pieces.get()) is not done:
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    pieces.get(timeout=0.05)
                except queue.Empty:
                    pass

    def generate_to_file(self, path: str | Path, n: int = 1, prefix: str = DEFAULT_PREFIX,
                         length: int = 300, **sampling) -> list[str]:
        """`generate`, and write the texts to `path` (atomically), as the CLI's
        --output does: one text, or each under a `--- sample k ---` line."""
        texts = self.generate(n, prefix, length, **sampling)
        shown = texts[0] + "\n" if n == 1 else samples_text("", texts)
        atomic_write_text(path, shown)
        return texts

    def _run(self, n, prefix, length, temperature, top_k, top_p, seed, on_chars) -> list[str]:
        if n < 1 or length < 0:
            raise CharRnnError(f"n must be >= 1 and length >= 0 (n {n}, length {length})")
        check_sampling(temperature, top_k, top_p)
        rng = np.random.default_rng(seed)
        return self._generator.generate(prefix, length, rng, temperature=temperature,
                                        top_k=top_k, top_p=top_p, num_samples=n,
                                        on_chars=on_chars)

    # ---- saving ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the portable `.safetensors` file (weights, config, vocabulary), which
        every framework, the CLI and this class load."""
        model = self._generator.model
        save_portable(path, model.get_weights(), model.config, self.portable.vocab,
                      **{k: v for k, v in self.portable.metadata.items()
                         if k not in ("format", "config", "vocab")})
        return Path(path)

    def export_onnx(self, path: str | Path) -> tuple[Path, Path]:
        """Write the model as ONNX (docs/ONNX.md): the sequence graph to `path`
        (NAME.onnx) and the one-step graph beside it (NAME.step.onnx), the vocabulary
        and config in their metadata. Returns both paths; needs the `onnx` extra."""
        from charrnn.common.onnx_export import export_onnx
        return export_onnx(path, self._portable_now())

    # ---- training --------------------------------------------------------------------
    @classmethod
    def train_from_file(cls, text_path: str | Path, framework: str = "numpy", *,
                        checkpoint_path: str | Path | None = None, **flags) -> TextGenerator:
        """Train a new model on a UTF-8 file and return it, ready to generate.

        `flags` are the train command's, by their Python names (`num_epochs`,
        `rnn_size`, `num_layers`, `batch_size`, `seq_len`, `drop_rate`, `learning_rate`,
        `cell`, ...). The checkpoint goes to `checkpoint_path` (default: the CLI's
        checkpoints/<framework>_model), so `restore=` resumes it like `--restore`."""
        model_cls = model_class(framework)
        checkpoint_path = Path(checkpoint_path or default_checkpoint_path(framework))
        _train(model_cls, text_path=str(text_path), checkpoint_path=str(checkpoint_path),
               **flags)
        return cls(checkpoint_path / PORTABLE_NAME, framework,
                   device=flags.get("device", TrainConfig.device), threads=flags.get("threads"))

    @classmethod
    def train_on_text(cls, text: str, framework: str = "numpy", *,
                      checkpoint_path: str | Path | None = None, **flags) -> TextGenerator:
        """`train_from_file` on a string; it is saved beside the checkpoint
        (`<checkpoint_path>.txt`), where a resume finds it."""
        checkpoint_path = Path(checkpoint_path or default_checkpoint_path(framework))
        text_path = _text_file(checkpoint_path, text, flags.get("restore"))
        return cls.train_from_file(text_path, framework, checkpoint_path=checkpoint_path,
                                   **flags)

    def fine_tune_from_file(self, text_path: str | Path, *,
                            checkpoint_path: str | Path | None = None, **flags) -> TextGenerator:
        """Go on training this model on another text (a new run from its weights: the
        optimiser starts afresh), and take the result in place. Characters the model
        has never seen join its vocabulary (`common.weights.grow_vocab`)."""
        text = read_text(text_path)
        checkpoint_path = Path(checkpoint_path or default_checkpoint_path(self.framework))
        seed = flags.get("random_seed", TrainConfig.random_seed)
        start = grow_vocab(self._portable_now(), text, seed)
        with tempfile.TemporaryDirectory() as tmp:
            init = Path(tmp) / "init.safetensors"
            save_portable(init, start.weights, start.config, start.vocab)
            _train(self._model_cls, text_path=str(text_path),
                   checkpoint_path=str(checkpoint_path), init_from=str(init), **flags)
        tuned = TextGenerator(checkpoint_path / PORTABLE_NAME, self.framework,
                              device=self.device, threads=self.threads,
                              cold_start=not self._generator.warm_start)
        self.__dict__.update(tuned.__dict__)
        return self

    def fine_tune_on_text(self, text: str, *, checkpoint_path: str | Path | None = None,
                          **flags) -> TextGenerator:
        """`fine_tune_from_file` on a string, saved as `<checkpoint_path>.txt`."""
        checkpoint_path = Path(checkpoint_path or default_checkpoint_path(self.framework))
        return self.fine_tune_from_file(_text_file(checkpoint_path, text, flags.get("restore")),
                                        checkpoint_path=checkpoint_path, **flags)

    def _portable_now(self) -> Portable:
        model = self._generator.model
        return Portable(model.get_weights(), model.config, self.portable.vocab,
                        dict(self.portable.metadata))


def _text_file(checkpoint_path: Path, text: str, restore: str | bool | None = None) -> Path:
    """`text` as `<checkpoint_path>.txt`; for a new run, refused first where the path holds
    another run, whose text this file is (rewriting it would break that run's resume)."""
    if not text:
        raise CharRnnError("the training text is empty")
    if restore is None:
        refuse_existing(checkpoint_path)
    path = checkpoint_path.with_name(checkpoint_path.name + ".txt")
    atomic_write_text(path, text)
    return path


def _train(model_cls: type[CharRNN], **flags) -> None:
    """`common.train.train` with a TrainConfig of `flags`; an unknown name is one line."""
    from charrnn.common.train import train
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise CharRnnError(f"unknown training setting(s) {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known))}")
    train(model_cls, TrainConfig(**flags))


__all__ = ["CharRnnError", "TextGenerator", "model_class"]
