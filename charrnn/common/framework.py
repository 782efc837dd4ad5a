"""The framework contract: what each `<framework>_model.py` implements, and nothing more.

The training loop (`common.train`), generation (`common.generate`), the CLI and
the conformance tests are written once against this class, the way
algorithmic-efficiency gives every framework the same Workload. Everything
crosses the boundary as NumPy: batches are int32 arrays of shape
(batch_size, seq_len), weights are the canonical layout of `common.weights`,
states convert to (h, c) arrays of shape (num_layers, batch_size, rnn_size).

A framework file defines one subclass and ends with

    if __name__ == "__main__":
        main(TorchCharRNN)
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from charrnn.common.config import FP32, ModelConfig, OptimConfig
from charrnn.common.distributed import SINGLE, World
from charrnn.common.errors import CharRnnError
from charrnn.common.weights import Weights

State = Any  # a framework's own (h, c) representation, opaque to common/


@dataclass(frozen=True)
class Device:
    """Where a model runs, as `CharRNN.setup_device` resolved `--device`."""

    kind: str = "cpu"  # "cpu" or "gpu"
    index: int = 0  # which GPU, for kind "gpu"
    description: str = "cpu"  # for logs: "gpu:0 (NVIDIA H100 80GB HBM3)"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    def __str__(self) -> str:
        return self.description


CPU = Device()


def choose_device(requested: str, gpu_names: list[str], no_gpu: str, index: int = 0) -> Device:
    """The one meaning of `--device`, for every framework.

    "cpu" is the CPU; "gpu" is the first GPU the framework sees (a data-parallel rank's:
    `index`, its local rank), and without one a CharRnnError saying `no_gpu` (why, and
    what to install); "auto" is that GPU when there is one, else the CPU. `gpu_names`
    are the framework's visible GPUs.
    """
    if requested == "gpu" and not gpu_names:
        raise CharRnnError(f"--device gpu: {no_gpu}")
    if requested in ("gpu", "auto") and gpu_names:
        if index >= len(gpu_names):
            raise CharRnnError(f"--device {requested}: local rank {index} has no GPU of its "
                               f"own ({len(gpu_names)} visible)")
        return Device("gpu", index, f"gpu:{index} ({gpu_names[index]})")
    return CPU


class CharRNN(abc.ABC):
    """One framework's Embedding -> recurrent layer x num_layers -> Dense, with its
    optimiser and clipping.

    Construction builds `config.cell` (lstm, gru or rnn: docs/SPEC.md section 8) from
    canonical weights (section 5) and a fresh optimiser of `optim.optimizer` with the
    penalties of section 9. Every method that takes a `state` returns the new state,
    already cut from the gradient graph (truncated BPTT); a GRU's and an RNN's c is
    zeros (section 10).
    """

    framework: ClassVar[str]  # registry name, e.g. "pytorch"
    # The --precision values this file implements (docs/SPEC.md section 12); the others are
    # refused by `check_precision`, before a model is built, naming `precision_refusal`:
    # what the framework lacks for them, as measured, or that they are not built yet.
    precisions: ClassVar[tuple[str, ...]] = (FP32,)
    precision_refusal: ClassVar[str] = "not built yet (issue 29)"

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        """Build from canonical `weights`; `seed` seeds the framework's dropout RNG;
        `optim.precision` is the arithmetic of training and evaluation (section 12)."""
        self.check_precision(optim.precision)
        self.config, self.optim, self.device, self.seed = config, optim, device, seed

    @classmethod
    def check_precision(cls, precision: str) -> None:
        """Raise CharRnnError, one line, when this framework has no `precision` path. The
        training loop calls it before it locks or writes anything; construction again."""
        if precision not in cls.precisions:
            raise CharRnnError(f"--precision {precision}: not available in {cls.framework}: "
                               f"{cls.precision_refusal} (docs/SPEC.md section 12)")

    # ---- environment ---------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def versions(cls) -> dict[str, str]:
        """{"framework": version, ...} of the libraries this implementation uses."""

    @classmethod
    def framework_version(cls) -> str:
        return next(iter(cls.versions().values()))

    @classmethod
    @abc.abstractmethod
    def setup_device(cls, device: str, threads: int | None) -> Device:
        """Apply thread settings and resolve "auto"/"cpu"/"gpu" with `choose_device`.

        Raises CharRnnError when "gpu" is asked for and none is usable.
        """

    # ---- data parallel (docs/SPEC.md section 11) ------------------------------------
    world: ClassVar[World] = SINGLE  # set by `init_world` in a multi-process run
    # What joining a world would take, for a framework that cannot: its one-line refusal.
    data_parallel_refusal: ClassVar[str] = "no data-parallel implementation"

    @classmethod
    def init_world(cls, world: World, device: str, timeout_s: float) -> None:
        """Join the framework's own process group as `world.rank` of `world.size`, for
        `--device` `device` (called once, before `setup_device` and any model, only when
        world.size > 1), with collectives that fail after `timeout_s` rather than hang.
        Sets `cls.world`; `setup_device` then picks the rank's own GPU
        (`world.local_rank`), and models built afterwards average their gradients over
        the world in `train_step`, before clipping, so every rank applies the
        single-process update. Raises CharRnnError when it cannot (the default:
        `data_parallel_refusal`)."""
        raise CharRnnError(f"{cls.framework} cannot train data-parallel "
                           f"({world.size} processes, from {world.source}): "
                           f"{cls.data_parallel_refusal}")

    @classmethod
    def all_sum(cls, values: np.ndarray) -> np.ndarray:
        """A small float64 host array summed over the world's ranks, through the
        framework's own collectives (the training loop's agreement on loss, stop and
        save, and the gathered state). Called only in a world of more than one process
        (`common.distributed.Agreement` answers for one itself); this default is one
        process's sum, `values`."""
        return values

    # ---- state ----------------------------------------------------------------------
    @abc.abstractmethod
    def zero_state(self, batch_size: int) -> State:
        """All-zero hidden and cell states for `batch_size` rows."""

    @abc.abstractmethod
    def state_to_numpy(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """(h, c), each float32 (num_layers, batch_size, rnn_size)."""

    @abc.abstractmethod
    def state_from_numpy(self, h: np.ndarray, c: np.ndarray) -> State:
        """Inverse of `state_to_numpy`."""

    # ---- compute ----------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Evaluation-mode logits (batch_size, seq_len, vocab_size) float32, and new state."""

    @abc.abstractmethod
    def loss_and_grads(self, x: np.ndarray, y: np.ndarray,
                       state: State) -> tuple[float, Weights, State]:
        """Loss and unclipped canonical gradients for one batch, without updating.

        Gradients of the whole objective (penalties included), named and shaped like
        the canonical weights; for a framework with two LSTM or RNN biases,
        "lstm.k.bias" is the gradient of its trained (first) bias. Evaluation mode
        (no dropout): this is for the conformance tests, not the training loop.
        """

    @abc.abstractmethod
    def train_step(self, x: np.ndarray, y: np.ndarray, state: State) -> tuple[float, State]:
        """One update: forward (dropout on), backward of the cross-entropy plus any
        penalty, global-norm clip, the optimiser's step. Returns the batch's mean
        cross-entropy in nats (as a Python float, so the clock is synchronised)."""

    @abc.abstractmethod
    def set_learning_rate(self, learning_rate: float) -> None:
        """The learning rate of the next `train_step`'s update and those after it, until
        set again: `--lr-schedule` sets it before every step (docs/SPEC.md section 9).
        It must reach an update that a compiled graph runs (a variable or an input,
        not a constant traced in), and leave the optimiser's state as it is."""

    def eval_step(self, x: np.ndarray, y: np.ndarray, state: State) -> tuple[float, State]:
        """Mean cross-entropy of one batch in evaluation mode, no update."""
        logits, state = self.forward(x, state)
        return cross_entropy(logits, y), state

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One generation step: ids (batch_size,) -> logits (batch_size, vocab_size).

        Override with a compiled one-step path where the framework has one;
        generation speed is measured through this method.
        """
        logits, state = self.forward(ids.reshape(-1, 1).astype(np.int32), state)
        return logits[:, -1], state

    def steps(self, ids: np.ndarray, state: State, count: int,
              choose: Callable[[np.ndarray, int], np.ndarray]) -> State:
        """`count` generation steps from `ids` (batch_size,) and `state`: step t feeds the
        ids and replaces them by `choose(logits, t)` (int32 (batch_size,), from the step's
        logits (batch_size, vocab_size) float32); the state after the last step.

        Generation (the seed's characters, then the sampled ones) runs through this. The
        default is a Python loop over `step`; override it where the framework runs the
        loop faster in its own graph, calling `choose` back from inside (the shared
        sampler stays NumPy). An exception `choose` raises comes out of `steps` as is.
        """
        for t in range(count):
            logits, state = self.step(ids, state)
            ids = choose(logits, t)
        return state

    def step_by_steps(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """`step` as one call of `steps`: for a row whose `steps` holds its fast path and
        whose `step` is that path run once (`step = CharRNN.step_by_steps`)."""
        logits = []
        state = self.steps(ids, state, 1, lambda out, t: logits.append(out) or ids)
        return logits[0], state

    # ---- weights and checkpoints ----------------------------------------------------
    @abc.abstractmethod
    def get_weights(self) -> Weights:
        """Current weights in the canonical layout (two biases summed into one)."""

    @abc.abstractmethod
    def save_native(self, directory: Path) -> None:
        """Write weights AND optimizer state in the framework's own format into the
        (existing, empty) `directory`. common/ makes the write atomic."""

    @abc.abstractmethod
    def load_native(self, directory: Path) -> None:
        """Restore what `save_native` wrote (the model was built with matching config)."""


class NumpyState:
    """State methods for frameworks whose (h, c) are NumPy arrays on the host (the NumPy
    reference, PyTensor): mix in before CharRNN."""

    def zero_state(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def state_to_numpy(self, state):
        return state[0].copy(), state[1].copy()

    def state_from_numpy(self, h, c):
        return np.array(h, np.float32), np.array(c, np.float32)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy in nats; logits (..., vocab_size), y (...) int ids."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, y[..., None].astype(np.int64), axis=-1)[..., 0]
    return float(np.mean(log_z - picked))

