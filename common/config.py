"""Configuration: frozen dataclasses, the one source of every flag and default.

The argparse parser in `common.cli` is generated from these fields, and the
resolved configs go into every log header and checkpoint, so a run can always
be traced back to the exact settings it used.

    >>> ModelConfig(vocab_size=98).num_params()
    229794
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


def flag(default, help, **argparse_kwargs):
    """A dataclass field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass(frozen=True)
class ModelFlags:
    """The model sizes a user sets on the command line (docs/SPEC.md section 1)."""

    embedding_size: int = flag(32, "character embedding size", positive=True)
    rnn_size: int = flag(128, "LSTM hidden and cell size (H)", positive=True)
    num_layers: int = flag(2, "number of stacked LSTM layers", positive=True)
    drop_rate: float = flag(0.0, "inverted dropout after the embedding and each LSTM layer")


@dataclass(frozen=True)
class ModelConfig(ModelFlags):
    """Sizes of Embedding -> num_layers x LSTM -> Dense: the flags plus what the text and
    the checkpoint decide."""

    vocab_size: int = 98  # number of character ids, id 0 = unknown
    cell: str = "lstm"  # recurrent cell type; only "lstm" is implemented

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical (PyTorch-layout) shapes of every parameter, docs/SPEC.md section 5."""
        shapes = {"embedding": (self.vocab_size, self.embedding_size)}
        for k in range(self.num_layers):
            input_size = self.embedding_size if k == 0 else self.rnn_size
            shapes[f"lstm.{k}.w_ih"] = (4 * self.rnn_size, input_size)
            shapes[f"lstm.{k}.w_hh"] = (4 * self.rnn_size, self.rnn_size)
            shapes[f"lstm.{k}.bias"] = (4 * self.rnn_size,)
        shapes["dense.w"] = (self.vocab_size, self.rnn_size)
        shapes["dense.b"] = (self.vocab_size,)
        return shapes

    def num_params(self) -> int:
        """Trainable parameters, counting ONE bias vector per LSTM layer."""
        total = 0
        for shape in self.param_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total

    def flops_per_char(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward step for one character.

        Counts the matrix products only (embedding lookup is free, the
        elementwise gate maths is O(H) and negligible): per layer
        4H x (in + H) MACs, then H x V for the dense layer. Training costs
        about three times this (forward, plus two products in backward).
        """
        macs = 0
        for k in range(self.num_layers):
            input_size = self.embedding_size if k == 0 else self.rnn_size
            macs += 4 * self.rnn_size * (input_size + self.rnn_size)
        macs += self.rnn_size * self.vocab_size
        return 2 * macs

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class OptimFlags:
    """The optimiser settings a user sets on the command line (docs/SPEC.md section 4)."""

    learning_rate: float = flag(0.001, "Adam learning rate", positive=True)
    clip_norm: float = flag(5.0, "maximum global L2 norm of the gradients", positive=True)


@dataclass(frozen=True)
class OptimConfig(OptimFlags):
    """Adam with global-norm clipping (docs/SPEC.md section 4)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass(frozen=True)
class DeviceFlags:
    """Where a command runs; every command has these."""

    device: str = flag("auto", "auto (the first GPU if the framework sees one, else the "
                       "CPU), cpu or gpu", choices=("auto", "cpu", "gpu"))
    threads: int | None = flag(None, "CPU threads for the framework (default: its own)",
                               positive=True)


@dataclass(frozen=True)
class TrainConfig(DeviceFlags, OptimFlags, ModelFlags):
    """Flags of `train`: the model and optimiser flags, plus these. Defaults are the
    original suite's."""

    checkpoint_path: str | None = flag(
        None, "checkpoint directory (default: checkpoints/<framework>_model)")
    text_path: str | None = flag(
        None, "training text, UTF-8 (default: tinyshakespeare, found or downloaded)")
    restore: str | None = flag(
        None, "resume from a checkpoint directory (default: --checkpoint-path)",
        nargs="?", const="")
    seq_len: int = flag(64, "characters per sequence (truncated BPTT length)", positive=True)
    batch_size: int = flag(64, "number of parallel text streams", positive=True)
    num_epochs: int = flag(32, "number of epochs", positive=True)
    log_path: str | None = flag(
        None, "human-readable log file (default: logs/<framework>_model.log); "
        "JSON lines go beside it with the .jsonl suffix")
    val_fraction: float = flag(0.1, "fraction of the text, from its end, kept for validation")
    random_seed: int = flag(42, "seed of the initial weights, dropout and samples")
    vocab: str = flag("auto", "vocabulary: auto, printable or corpus",
                      choices=("auto", "printable", "corpus"))
    init_from: str | None = flag(None, "start from this portable .safetensors file")
    max_steps: int | None = flag(None, "stop after this many training steps in total",
                                 positive=True)
    checkpoint_every: int = flag(0, "also save a checkpoint every N training steps "
                                 "(0: off)", non_negative=True)
    checkpoint_minutes: float = flag(10.0, "also save a checkpoint after every M minutes "
                                     "of training (0: off); a kill -9 then loses at most "
                                     "that much", non_negative=True)
    log_every: int | None = flag(None, "also log a line every N steps", positive=True)
    sample_length: int = flag(200, "characters sampled into the log after each epoch "
                              "(0 turns samples off)", non_negative=True)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, **_values(self, ModelFlags))

    def optim_config(self) -> OptimConfig:
        return OptimConfig(**_values(self, OptimFlags))


def _values(config, flags_cls) -> dict:
    """The fields of `flags_cls` as `config` sets them."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(flags_cls)}


@dataclass(frozen=True)
class GenerateConfig(DeviceFlags):
    """Flags of `generate` and `repl`."""

    checkpoint_path: str | None = flag(
        None, "checkpoint directory or portable .safetensors file from any framework "
        "(default: checkpoints/<framework>_model, else the shipped pretrained model)")
    text_path: str | None = flag(None, "take a random seed of seq_len characters from this text")
    seed: str | None = flag(None, "seed text the generated text continues")
    length: int = flag(1024, "characters to generate", non_negative=True)
    top_n: int = flag(3, "sample only among the n most likely characters (0 = all)",
                      non_negative=True)
    temperature: float = flag(1.0, "softmax temperature; 0 means greedy", non_negative=True)
    top_p: float = flag(1.0, "nucleus sampling: smallest set with this total probability")
    num_samples: int = flag(1, "independent samples generated together as one batch",
                            positive=True)
    random_seed: int | None = flag(None, "seed for exactly reproducible samples")
    output: str | None = flag(None, "also write the generated text to this file")
    cold_start: bool = flag(False, "start from the all-zero state instead of the warmed-up "
                            "state at a paragraph break (docs/SPEC.md section 10)",
                            action="store_true")


@dataclass(frozen=True)
class ExportConfig(DeviceFlags):
    """Flags of `export`."""

    checkpoint_path: str | None = flag(
        None, "checkpoint directory (default: checkpoints/<framework>_model)")
    output: str | None = flag(None, "portable .safetensors file to write "
                              "(default: <checkpoint>/../<framework>_model.safetensors)")
