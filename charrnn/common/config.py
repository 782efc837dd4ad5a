"""Configuration: frozen dataclasses, the one source of every flag and default.

The argparse parser in `common.cli` is generated from these fields, and the
resolved configs go into every log header and checkpoint, so a run can always
be traced back to the exact settings it used.

    >>> ModelConfig(vocab_size=98).num_params()
    229794
    >>> ModelConfig(vocab_size=98, cell="gru").param_shapes()["gru.0.w_ih"]
    (384, 32)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from charrnn.common.errors import CharRnnError

CELLS = ("lstm", "gru", "rnn")  # docs/SPEC.md section 8
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # blocks of H rows in a cell's kernels
OPTIMIZERS = ("adam", "rmsprop", "sgd")  # docs/SPEC.md section 9
LR_SCHEDULES = ("constant", "linear")  # docs/SPEC.md section 9
EXPORT_FORMATS = ("safetensors", "onnx")  # export --format (docs/SPEC.md section 6)
FP32 = "fp32"  # --precision: float32 everywhere (docs/SPEC.md section 4)
BF16_MIXED = "bf16-mixed"  # bf16 operands of every matrix product, float32 elsewhere
PRECISIONS = (FP32, BF16_MIXED)  # docs/SPEC.md section 12
# The models shipped in charrnn/pretrained/, by the name `generate --model` takes.
PRETRAINED_MODELS = {"default": "tinyshakespeare.safetensors",
                     "large": "tinyshakespeare-large.safetensors"}
DEVICES = ("auto", "cpu", "gpu")  # --device (docs/SPEC.md section 10, "Devices and threads")


# What `train --restore` does with a flag (docs/SPEC.md section 10, "Resuming"):
RUN = "run"  # the run's own: taken from the checkpoint; a different value given is refused
SETTING = "setting"  # may change on resume: a value given applies, else the checkpoint's
COMMAND = "command"  # this command's alone: never taken from the checkpoint


def flag(default, help, resume=RUN, **argparse_kwargs):
    """A dataclass field that also describes its command-line flag, and what a resumed
    run does with it (RUN, SETTING or COMMAND)."""
    return field(default=default, metadata={"help": help, "resume": resume, **argparse_kwargs})


def resume_rule(f: dataclasses.Field) -> str:
    """RUN, SETTING or COMMAND for a config field."""
    return f.metadata.get("resume", RUN)


@dataclass(frozen=True)
class ModelFlags:
    """The model sizes a user sets on the command line (docs/SPEC.md section 1)."""

    embedding_size: int = flag(32, "character embedding size", positive=True)
    rnn_size: int = flag(128, "hidden size of each recurrent layer (H)", positive=True)
    num_layers: int = flag(2, "number of stacked recurrent layers", positive=True)
    drop_rate: float = flag(0.0, "inverted dropout after the embedding and each recurrent layer")
    cell: str | None = flag(None, "recurrent cell: lstm, gru or rnn (default: lstm, or the "
                            "cell of the --init-from file or --restore checkpoint)",
                            choices=CELLS)


@dataclass(frozen=True)
class ModelConfig(ModelFlags):
    """Sizes of Embedding -> num_layers x LSTM -> Dense: the flags plus what the text and
    the checkpoint decide."""

    vocab_size: int = 98  # number of character ids, id 0 = unknown
    cell: str = "lstm"  # recurrent cell, one of CELLS

    def __post_init__(self):
        if self.cell not in CELLS:
            raise CharRnnError(f"unknown cell {self.cell!r}: choose from {', '.join(CELLS)}")

    @property
    def gates(self) -> int:
        """Blocks of rnn_size rows in the cell's kernels: 4 (lstm), 3 (gru), 1 (rnn)."""
        return GATES[self.cell]

    def layer(self, k: int) -> str:
        """Prefix of layer k's canonical names: "lstm.0", "gru.1", ..."""
        return f"{self.cell}.{k}"

    def bias_names(self) -> tuple[str, ...]:
        """A layer's canonical bias names: ("bias",) or GRU's ("b_ih", "b_hh")."""
        return ("b_ih", "b_hh") if self.cell == "gru" else ("bias",)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical (PyTorch-layout) shapes of every parameter, docs/SPEC.md section 5."""
        shapes = {"embedding": (self.vocab_size, self.embedding_size)}
        rows = self.gates * self.rnn_size
        for k in range(self.num_layers):
            input_size = self.embedding_size if k == 0 else self.rnn_size
            shapes[f"{self.layer(k)}.w_ih"] = (rows, input_size)
            shapes[f"{self.layer(k)}.w_hh"] = (rows, self.rnn_size)
            for bias in self.bias_names():
                shapes[f"{self.layer(k)}.{bias}"] = (rows,)
        shapes["dense.w"] = (self.vocab_size, self.rnn_size)
        shapes["dense.b"] = (self.vocab_size,)
        return shapes

    def kernel_names(self) -> list[str]:
        """The parameters --l1 and --l2 penalise: the recurrent layers' kernels and the
        dense kernel, not the embedding or any bias (docs/SPEC.md section 9)."""
        return [n for n in self.param_shapes() if n.endswith((".w_ih", ".w_hh", "dense.w"))]

    def num_params(self) -> int:
        """Trainable parameters, counting ONE bias vector per LSTM or RNN layer (GRU's
        two are both canonical)."""
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
        gates x H x (in + H) MACs (gates 4, 3, 1 for lstm, gru, rnn), then H x V for
        the dense layer. Training costs about three times this (forward, plus two
        products in backward).
        """
        macs = 0
        for k in range(self.num_layers):
            input_size = self.embedding_size if k == 0 else self.rnn_size
            macs += self.gates * self.rnn_size * (input_size + self.rnn_size)
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
    """The optimiser settings a user sets on the command line (docs/SPEC.md sections 4
    and 9). None: the optimiser's default (momentum 0, decay rate 0.95), or for
    --optimizer, adam or the --restore checkpoint's."""

    optimizer: str | None = flag(None, "adam, rmsprop or sgd (default: adam, or the "
                                 "--restore checkpoint's)", choices=OPTIMIZERS)
    learning_rate: float = flag(0.001, "learning rate", positive=True)
    clip_norm: float = flag(5.0, "maximum global L2 norm of the gradients", positive=True)
    decay_rate: float | None = flag(None, "RMSprop's decay rate rho of the mean squared "
                                    "gradient, in [0, 1) (default 0.95; rmsprop only)")
    momentum: float | None = flag(None, "SGD momentum, in [0, 1) (default 0; sgd only)")
    l1: float = flag(0.0, "L1 penalty on the kernels of the recurrent and dense layers",
                     non_negative=True)
    l2: float = flag(0.0, "L2 penalty on the kernels of the recurrent and dense layers",
                     non_negative=True)
    lr_schedule: str = flag("constant", "learning rate over the run: constant, or linear "
                            "(decays to zero at the run's last step, as textgenrnn's)",
                            choices=LR_SCHEDULES)
    # Here, with the optimiser, because it is how training computes: the model gets it
    # through OptimConfig for training and validation, while generation and export
    # build with OptimConfig() and so run in fp32 from the float32 weights (section 12).
    precision: str = flag(FP32, "arithmetic of training and validation: fp32, or "
                          "bf16-mixed (bf16 operands of every matrix product, float32 "
                          "accumulation, weights, state, gates, loss and update; docs/SPEC.md "
                          "section 12)", choices=PRECISIONS)


@dataclass(frozen=True)
class OptimConfig(OptimFlags):
    """The resolved optimiser: Adam, RMSprop or SGD with global-norm clipping and
    optional L1/L2 penalties (docs/SPEC.md sections 4 and 9)."""

    optimizer: str = "adam"
    decay_rate: float = 0.95
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise CharRnnError(f"unknown optimizer {self.optimizer!r}: choose from "
                               f"{', '.join(OPTIMIZERS)}")
        for name in ("decay_rate", "momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise CharRnnError(f"--{name.replace('_', '-')} {getattr(self, name)} must be "
                                   "in [0, 1)")
        if self.l1 < 0 or self.l2 < 0:
            raise CharRnnError(f"penalties must be >= 0 (--l1 {self.l1}, --l2 {self.l2})")
        if self.precision not in PRECISIONS:
            raise CharRnnError(f"unknown --precision {self.precision!r}: choose from "
                               f"{', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise CharRnnError(f"unknown --lr-schedule {self.lr_schedule!r}: choose from "
                               f"{', '.join(LR_SCHEDULES)}")

    @property
    def penalised(self) -> bool:
        return self.l1 > 0 or self.l2 > 0

    def learning_rate_at(self, step: int, total_steps: int) -> float:
        """The learning rate of update `step` (1-based) of a run of `total_steps`:
        constant, or linear, learning_rate * (1 - (step - 1) / total_steps), so the first
        update takes the full rate and the rate would reach zero one step after the last
        (docs/SPEC.md section 9)."""
        if self.lr_schedule == "constant":
            return self.learning_rate
        return self.learning_rate * max(0.0, 1.0 - (step - 1) / max(total_steps, 1))

    def slots(self) -> tuple[str, ...]:
        """The per-parameter state arrays the optimiser keeps: Adam's moments m and v,
        RMSprop's mean square v, SGD's momentum buffer b."""
        return {"adam": ("m", "v"), "rmsprop": ("v",), "sgd": ("b",)}[self.optimizer]


@dataclass(frozen=True)
class DeviceFlags:
    """Where a command runs; every command has these."""

    device: str = flag("auto", "auto (the first GPU if the framework sees one, else the "
                       "CPU), cpu or gpu", choices=DEVICES, resume=COMMAND)
    threads: int | None = flag(None, "CPU threads for the framework (default: its own)",
                               positive=True, resume=COMMAND)


@dataclass(frozen=True)
class TrainConfig(DeviceFlags, OptimFlags, ModelFlags):
    """Flags of `train`: the model and optimiser flags, plus these. Defaults are the
    original suite's."""

    checkpoint_path: str | None = flag(
        None, "checkpoint directory (default: checkpoints/<framework>_model, or the "
        "--restore directory)", resume=COMMAND)
    text_path: str | None = flag(
        None, "training text, UTF-8 (default: tinyshakespeare, found or downloaded; with "
        "--restore, the checkpoint's, or where it moved to)")
    restore: str | None = flag(
        None, "resume the run of a checkpoint directory (default: --checkpoint-path), with "
        "its text, model, data and optimiser settings", nargs="?", const="", resume=COMMAND)
    seq_len: int = flag(64, "characters per sequence (truncated BPTT length)", positive=True)
    batch_size: int = flag(64, "number of parallel text streams", positive=True)
    num_epochs: int = flag(32, "number of epochs", positive=True, resume=SETTING)
    log_path: str | None = flag(
        None, "human-readable log file (default: logs/<framework>_model.log); "
        "JSON lines go beside it with the .jsonl suffix", resume=SETTING)
    val_fraction: float = flag(0.1, "fraction of the text, from its end, kept for validation")
    random_seed: int = flag(42, "seed of the initial weights, dropout and samples")
    vocab: str = flag("auto", "vocabulary: auto, printable or corpus",
                      choices=("auto", "printable", "corpus"))
    init_from: str | None = flag(None, "start a new run from this portable .safetensors "
                                 "file's weights, model and vocabulary", resume=COMMAND)
    max_steps: int | None = flag(None, "stop this command after this many training steps "
                                 "in total", positive=True, resume=COMMAND)
    checkpoint_every: int = flag(0, "also save a checkpoint every N training steps "
                                 "(0: off)", non_negative=True, resume=SETTING)
    checkpoint_minutes: float = flag(10.0, "also save a checkpoint after every M minutes "
                                     "of training (0: off); a kill -9 then loses at most "
                                     "that much", non_negative=True, resume=SETTING)
    log_every: int | None = flag(None, "also log a line every N steps", positive=True,
                                 resume=SETTING)
    sample_length: int = flag(200, "characters sampled into the log after each epoch "
                              "(0 turns samples off)", non_negative=True, resume=SETTING)
    state_reset: float = flag(0.0, "chance, in [0, 1), that a row's carried state is set to "
                              "zero before a training step, so the model also learns to "
                              "start from zeros (the rows are drawn from --random-seed and "
                              "the step: the same in every framework)", non_negative=True)
    keep_best: bool = flag(False, "also keep the portable file of the epoch with the lowest "
                           "validation loss, as <checkpoint>/best.safetensors",
                           action="store_true", resume=SETTING)
    val_window: int = flag(0, "also report the validation loss in windows of N characters, "
                           "each from the zero state, as a deployed model starts (0: off)",
                           non_negative=True, resume=SETTING)
    collective_timeout: float = flag(600.0, "data-parallel runs: seconds a rank waits for "
                                     "the others (to join, or in a collective) before it "
                                     "fails", positive=True, resume=SETTING)

    def __post_init__(self):
        # A flag of another optimiser is a mistake, not something to ignore silently.
        for name, owner in (("momentum", "sgd"), ("decay_rate", "rmsprop")):
            resumed = self.optimizer is None and self.restore is not None  # checked once known
            if getattr(self, name) is not None and not resumed and (
                    self.optimizer or "adam") != owner:
                raise CharRnnError(f"--{name.replace('_', '-')} applies only to --optimizer "
                                   f"{owner} (this run uses {self.optimizer or 'adam'})")
        self.optim_config()  # ranges: decay rate and momentum in [0, 1)
        if not 0.0 <= self.state_reset < 1.0:
            raise CharRnnError(f"--state-reset {self.state_reset} must be in [0, 1)")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, **_values(self, ModelFlags))

    def optim_config(self) -> OptimConfig:
        return OptimConfig(**_values(self, OptimFlags))


def _values(config, flags_cls) -> dict:
    """The fields of `flags_cls` that `config` sets (None: the resolved class's default)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(flags_cls)}
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class GenerateConfig(DeviceFlags):
    """Flags of `generate` and `repl`."""

    checkpoint_path: str | None = flag(
        None, "checkpoint directory or portable .safetensors file from any framework "
        "(default: checkpoints/<framework>_model, else the shipped pretrained model)")
    model: str | None = flag(None, "a model shipped with the package, by name, instead of "
                             "--checkpoint-path (docs/USAGE.md, \"The pretrained models\")",
                             choices=tuple(PRETRAINED_MODELS))
    text_path: str | None = flag(None, "take a random seed of seq_len characters from this text")
    seed: str | None = flag(None, "seed text the generated text continues")
    length: int = flag(1024, "characters to generate", non_negative=True)
    top_k: int = flag(3, "sample only among the k most likely characters (0 = all); "
                      "--top-n is the original suite's name for it", aliases=("--top-n",),
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

    def __post_init__(self):
        if self.model is not None and self.checkpoint_path is not None:
            raise CharRnnError(f"--model {self.model} and --checkpoint-path "
                               f"{self.checkpoint_path}: give one of them, not both")


@dataclass(frozen=True)
class ExportConfig(DeviceFlags):
    """Flags of `export`."""

    checkpoint_path: str | None = flag(
        None, "checkpoint directory, or a portable .safetensors file from any framework "
        "(default: checkpoints/<framework>_model)")
    output: str | None = flag(None, "file to write (default: <checkpoint>/../"
                              "<framework>_model.safetensors, or .onnx with --format onnx)")
    format: str = flag("safetensors", "safetensors (the portable file) or onnx: NAME.onnx, "
                       "the sequence graph, and NAME.step.onnx, the one-step graph "
                       "(docs/ONNX.md)", choices=EXPORT_FORMATS)
