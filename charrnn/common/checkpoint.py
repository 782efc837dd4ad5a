"""Checkpoint directories: native framework files plus the portable weights and the loop's place.

    checkpoints/pytorch_model/
        model.safetensors   portable weights, config, vocab (any framework can generate from it)
        native/             the framework's own files: weights AND optimizer state
        trainer.json        epoch, next batch, step, losses so far; the run as resolved
                            (every train flag, the text's path, size and SHA-256)
        state.safetensors   the carried (h, c) training state, for an exact resume
        best.safetensors    with --keep-best: the portable weights of the epoch with the
                            lowest validation loss so far

The whole directory is replaced atomically (`common.fileio.atomic_directory`),
so an interrupted or failed save leaves the previous checkpoint intact. A run that
writes a checkpoint directory holds `<directory>.lock` (an flock, released by the
kernel when the process dies), so a second run cannot write the same one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from charrnn.common.config import TrainConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_directory, resolve_directory, write_failure
from charrnn.common.framework import CharRNN
from charrnn.common.text import TextId, Vocab
from charrnn.common.weights import Portable, load_portable, save_portable

PORTABLE_NAME = "model.safetensors"
TRAINER_NAME = "trainer.json"
BEST_NAME = "best.safetensors"  # --keep-best
# trainer.json's layout. 2: the resolved run and the text's identity (1 held the flags
# as typed, so a resume could not tell which text, shapes or sizes it had trained with).
TRAINER_FORMAT = 2


@dataclass
class Progress:
    """Where the training loop stands: the next batch to train is (epoch, batch)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    epoch_losses: list[float] = dataclasses.field(default_factory=list)  # this epoch so far
    train_loss: float | None = None  # last complete epoch's mean
    val_loss: float | None = None
    best_val_loss: float | None = None  # --keep-best: the val loss of best.safetensors


def portable_metadata(model: CharRNN, progress: Progress) -> dict[str, str]:
    return {"framework": model.framework, "framework_version": model.framework_version(),
            "epoch": progress.epoch, "batch": progress.batch, "step": progress.step,
            "train_loss": progress.train_loss, "val_loss": progress.val_loss}


def save_checkpoint(directory: str | Path, model: CharRNN, vocab: Vocab, progress: Progress,
                    state: tuple[np.ndarray, np.ndarray], train_config: TrainConfig,
                    text_id: TextId, new_best: bool = False,
                    best_from: str | Path | None = None) -> None:
    """Write a complete checkpoint directory atomically; `state` is the carried (h, c) of
    the whole batch, each (num_layers, batch_size, rnn_size); `train_config` the run as
    resolved (`common.resume.resolved`), `text_id` the text it trains on. `new_best`:
    these weights also become best.safetensors; otherwise the best.safetensors of
    `best_from` (default: the previous `directory`), if any, is carried into the new one:
    a run resumed into another directory carries the checkpoint's it resumed.

    Any failure (whatever a framework's native save raises) becomes a CharRnnError
    naming the directory and the reason; the previous checkpoint stays as it was.
    """
    try:
        with atomic_directory(directory) as tmp:
            save_portable(tmp / PORTABLE_NAME, model.get_weights(), model.config, vocab,
                          **portable_metadata(model, progress))
            previous_best = resolve_directory(Path(best_from or directory)) / BEST_NAME
            if new_best:
                shutil.copyfile(tmp / PORTABLE_NAME, tmp / BEST_NAME)
            elif previous_best.is_file():
                shutil.copyfile(previous_best, tmp / BEST_NAME)
            (tmp / "native").mkdir()
            model.save_native(tmp / "native")
            h, c = state
            safetensors.numpy.save_file({"h": h, "c": c}, str(tmp / "state.safetensors"))
            trainer = {"format": TRAINER_FORMAT, "framework": model.framework,
                       "progress": dataclasses.asdict(progress),
                       "train_config": dataclasses.asdict(train_config),
                       "text": dataclasses.asdict(text_id)}
            (tmp / TRAINER_NAME).write_text(json.dumps(trainer, indent=2))
    except Exception as exc:
        raise write_failure(directory, exc) from None


@contextlib.contextmanager
def checkpoint_lock(directory: str | Path) -> Iterator[None]:
    """Hold `<directory>.lock` while writing `directory`; refuse if another process does.

    fcntl.flock is released by the kernel when the holder exits, even by kill -9, so a
    stale lock file never blocks a later run. The file holds the holder's pid.
    """
    directory = Path(directory)
    lock_path = directory.with_name(directory.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise CharRnnError(
                f"{directory}: another run (pid {pid}) is writing this checkpoint "
                "directory; wait for it to finish or use another --checkpoint-path") from None
        with contextlib.suppress(OSError):  # a full disk: the lock holds, the pid is unsaid
            os.pwrite(fd, f"{os.getpid():<12}\n".encode(), 0)  # fixed width: no truncate
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class Checkpoint:
    directory: Path
    portable: Portable
    progress: Progress
    framework: str
    run: TrainConfig | None  # the run as resolved; None in a format-1 checkpoint
    text: TextId | None  # the text it trained on; None in a format-1 checkpoint
    h: np.ndarray
    c: np.ndarray


def refuse_existing(path: Path, init_from: str | None = None) -> None:
    """A new run must not write over another run's checkpoint (docs/SPEC.md section 10):
    its first save would replace those weights for good. Unless it starts from that
    checkpoint's own weights (`--init-from <path>/model.safetensors`): then it says so."""
    if init_from and Path(init_from).resolve().parent == path.resolve():
        return
    directory = resolve_directory(path)  # `<path>.old` too, as a resume would find it
    if any((directory / name).exists() for name in (TRAINER_NAME, PORTABLE_NAME)):
        raise CharRnnError(
            f"{path} already holds a checkpoint: continue that run with --restore {path}, "
            "or give another --checkpoint-path (delete the directory to start over)")


def load_checkpoint(directory: str | Path, framework: str) -> Checkpoint:
    """Read everything but the native files (the model loads those itself)."""
    given = Path(directory)
    directory = resolve_directory(given)
    if not directory.is_dir():
        raise CharRnnError(f"{given}: no checkpoint directory to restore from")
    trainer_path = directory / TRAINER_NAME
    try:
        trainer = json.loads(trainer_path.read_text())
        progress = Progress(**trainer["progress"])
        run = text = None
        if trainer.get("format", 1) >= TRAINER_FORMAT:
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            run = TrainConfig(**{k: v for k, v in trainer["train_config"].items() if k in known})
            text = TextId(**trainer["text"])
    except (OSError, ValueError, KeyError, TypeError, CharRnnError) as exc:
        raise CharRnnError(f"{trainer_path}: unreadable checkpoint record ({exc})") from None
    if trainer.get("framework") != framework:
        raise CharRnnError(
            f"{directory}: written by {trainer.get('framework')}, not {framework}; "
            f"start from its weights with --init-from {directory / PORTABLE_NAME}")
    portable = load_portable(directory / PORTABLE_NAME)
    try:
        state = safetensors.numpy.load_file(str(directory / "state.safetensors"))
        h, c = state["h"], state["c"]
    except Exception as exc:
        raise CharRnnError(f"{directory / 'state.safetensors'}: unreadable ({exc})") from None
    return Checkpoint(directory, portable, progress, framework, run, text, h, c)


def restore_native(model: CharRNN, directory: Path) -> None:
    """`model.load_native`, with any failure turned into one line naming the directory."""
    native = directory / "native"
    try:
        model.load_native(native)
    except CharRnnError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CharRnnError(f"{native}: cannot restore the {model.framework} checkpoint "
                           f"({type(exc).__name__}: {first})") from None


def find_portable(path: str | Path) -> Path:
    """A portable file from a `.safetensors` path or a checkpoint directory."""
    path = resolve_directory(Path(path))
    if path.is_dir():
        return path / PORTABLE_NAME
    return path


def save_arrays_and_slots(path: Path, params: dict[str, np.ndarray], slots: dict[str, dict],
                          count: int, rng_state: dict) -> None:
    """A native checkpoint for frameworks whose state is plain arrays (NumPy, PyTensor):
    parameters and the optimiser's per-parameter slots (`OptimConfig.slots`, stored as
    `<slot>.<name>`: Adam's m and v, RMSprop's v, SGD's b) in one safetensors file, the
    step count and a NumPy generator's state as metadata."""
    arrays = dict(params)
    for slot, values in slots.items():
        arrays.update({f"{slot}.{n}": a for n, a in values.items()})
    meta = {"count": str(int(count)), "slots": json.dumps(sorted(slots)),
            "rng": json.dumps(rng_state)}
    safetensors.numpy.save_file(arrays, str(path), metadata=meta)


def load_arrays_and_slots(path: Path, names) -> tuple[dict, dict, int, dict]:
    """(params, slots, count, rng_state) written by `save_arrays_and_slots`."""
    with safetensors.safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        arrays = {name: f.get_tensor(name) for name in f.keys()}
    params = {n: arrays[n].copy() for n in names}
    slots = {slot: {n: arrays[f"{slot}.{n}"].copy() for n in names}
             for slot in json.loads(meta["slots"])}
    return params, slots, int(meta["count"]), json.loads(meta["rng"])
