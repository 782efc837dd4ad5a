"""The training loop, written once for every framework (docs/SPEC.md sections 3, 4 and 7).

    from charrnn.common.train import train
    train(TorchCharRNN, TrainConfig(num_epochs=1))

The loop owns the data, the carried state, timing, logging and checkpoints; the
framework only runs `train_step` and `eval_step` on NumPy batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from charrnn.common import distributed, resume
from charrnn.common.batching import Batches, make_streams, split_ids
from charrnn.common.checkpoint import (
    BEST_NAME,
    Checkpoint,
    Progress,
    checkpoint_lock,
    load_checkpoint,
    refuse_existing,
    restore_native,
    save_checkpoint,
)
from charrnn.common.config import ModelConfig, OptimConfig, TrainConfig
from charrnn.common.distributed import Agreement, World, config_digest, world_from_env
from charrnn.common.errors import CharRnnError, Stopped
from charrnn.common.framework import CharRNN, Device
from charrnn.common.generate import Generator
from charrnn.common.logs import RunLogger, SilentLogger, bits, format_duration
from charrnn.common.paths import default_checkpoint_path, default_log_path
from charrnn.common.text import TextId, Vocab, default_corpus_path, read_text
from charrnn.common.weights import Weights, init_weights, load_portable, penalty

SAMPLE_TEMPERATURES = (0.2, 0.5, 1.0)  # textgenrnn-style samples after each epoch


def evaluate(model: CharRNN, batches: Batches | None) -> float | None:
    """Mean loss over a whole stream, its own state starting from zeros, no updates."""
    if batches is None:
        return None
    state = model.zero_state(batches.batch_size)
    losses = []
    for j in range(batches.num_batches):
        loss, state = model.eval_step(*batches.batch(0, j), state)
        losses.append(loss)
    return float(np.mean(losses))


def window_loss(model: CharRNN, ids: np.ndarray, window: int,
                rows_per_batch: int = 256) -> float | None:
    """Mean loss over the consecutive `window`-character windows of `ids`, each window
    from the zero state: how well a model does where a deployment starts (the API, an
    ONNX graph, a web page), not deep into a carried state. None: `ids` is too short."""
    count = (len(ids) - 1) // window
    if count == 0:
        return None
    n = count * window
    x = ids[:n].reshape(count, window).astype(np.int32)  # (count, window)
    y = ids[1:n + 1].reshape(count, window).astype(np.int32)
    total = 0.0
    for start in range(0, count, rows_per_batch):
        rows = slice(start, start + rows_per_batch)
        loss, _ = model.eval_step(x[rows], y[rows], model.zero_state(len(x[rows])))
        total += loss * len(x[rows])  # every window has `window` positions: a plain mean
    return total / count


def reset_rows(cfg: TrainConfig, step: int) -> np.ndarray:
    """The rows of step `step`'s (0-based) batch whose carried state --state-reset sets
    to zero before the step: a boolean (batch_size,) drawn from --random-seed and the
    step alone, so every framework, world size and resumed run draws the same rows."""
    rng = np.random.default_rng([cfg.random_seed, _STATE_RESET_STREAM, step])
    return rng.random(cfg.batch_size) < cfg.state_reset


def zero_rows(model: CharRNN, state: object, rows: np.ndarray) -> object:
    """`state` with the rows of boolean mask `rows` set to zero (h and c of every layer),
    through NumPy: the one path every framework has, and a copy of a few kB a step."""
    if not rows.any():
        return state
    h, c = (a.copy() for a in model.state_to_numpy(state))
    h[:, rows] = 0.0
    c[:, rows] = 0.0
    return model.state_from_numpy(h, c)


_STATE_RESET_STREAM = 1  # keeps --state-reset's draws apart from other seeded streams


def _progress_bar(total: int, initial: int, desc: str):
    """A tqdm bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False)


@dataclasses.dataclass
class Prepared:
    """Everything a run starts from, whether fresh, --init-from or --restore."""

    checkpoint: Checkpoint | None  # the checkpoint resumed from, if any
    checkpoint_path: Path  # where this run saves
    text_path: Path
    text: str
    text_id: TextId  # recorded in every checkpoint; a resume checks the text against it
    vocab: Vocab
    model_config: ModelConfig
    weights: Weights
    cfg: TrainConfig  # the run as resolved (common.resume.resolved): what is saved and logged


def prepare(framework: str, cfg: TrainConfig, given: frozenset[str] | None = None) -> Prepared:
    """Text, vocabulary, initial weights and progress, from flags or a checkpoint.

    `given`: the flags typed on the command line (default: those that differ from
    TrainConfig's defaults). --restore continues the checkpoint's run as it was
    resolved and refuses a run flag given with another value; --init-from takes the
    file's model and refuses a size or cell flag that differs (common.resume)."""
    given = resume.flags_differing_from_defaults(cfg) if given is None else given
    if cfg.restore is not None:
        return _prepare_resume(framework, cfg, given)
    checkpoint_path = Path(cfg.checkpoint_path or default_checkpoint_path(framework))
    portable = load_portable(cfg.init_from) if cfg.init_from else None
    if portable is not None:
        resume.check_init_from(cfg, given, portable, cfg.init_from)
    text_path = Path(cfg.text_path) if cfg.text_path else default_corpus_path()
    text = read_text(text_path)
    if portable is not None:
        resume.check_vocab(cfg, given, text, portable.vocab, cfg.init_from)
        model_config = dataclasses.replace(portable.config, drop_rate=cfg.drop_rate)
        vocab, weights = portable.vocab, portable.weights
    else:
        vocab = Vocab.choose(text, cfg.vocab)
        model_config = cfg.model_config(vocab.size)
        weights = init_weights(model_config, cfg.random_seed)
    text_id = TextId.of(text_path, text)
    # The log path absolute, so that a resume from another directory appends to it.
    log_path = Path(cfg.log_path or default_log_path(framework)).resolve()
    run_cfg = dataclasses.replace(resume.resolved(cfg, model_config, text_id),
                                  log_path=str(log_path))
    refuse_existing(checkpoint_path, cfg.init_from)  # after the text's and flags' errors
    return Prepared(None, checkpoint_path, text_path, text, text_id, vocab, model_config,
                    weights, run_cfg)


def _prepare_resume(framework: str, cfg: TrainConfig, given: frozenset[str]) -> Prepared:
    """The checkpoint's run, its text checked, with the flags given that may change."""
    # Saves go back where the run was read from (the path as named: after an interrupted
    # swap the files come from `<path>.old`), unless --checkpoint-path says otherwise.
    checkpoint_path = Path(cfg.restore or cfg.checkpoint_path
                           or default_checkpoint_path(framework))
    checkpoint = load_checkpoint(checkpoint_path, framework)
    checkpoint_path = Path(cfg.checkpoint_path or checkpoint_path)
    directory = checkpoint.directory
    if checkpoint.run is None or checkpoint.text is None:
        raise CharRnnError(f"{directory}: written before checkpoints recorded their run (text, "
                           f"shapes, optimiser), so it cannot be resumed exactly; "
                           f"{resume.new_run_hint(directory)}")
    run_cfg = resume.merge_resumed(cfg, given, checkpoint.run, directory)
    portable = checkpoint.portable
    text_path, text, text_id = resume.resume_text(cfg, given, checkpoint.text, portable.vocab,
                                                  directory)
    resume.check_vocab(cfg, given, text, portable.vocab, directory)
    run_cfg = dataclasses.replace(run_cfg, checkpoint_path=str(checkpoint_path),
                                  text_path=text_id.path)
    model_config = dataclasses.replace(portable.config, drop_rate=run_cfg.drop_rate)
    return Prepared(checkpoint, checkpoint_path, text_path, text, text_id, portable.vocab,
                    model_config, portable.weights, run_cfg)


def train(model_cls: type[CharRNN], cfg: TrainConfig,
          given: frozenset[str] | None = None) -> Progress:
    """Train per SPEC; returns the final progress. Raises CharRnnError on bad input, and
    Stopped after saving when a signal asks the run to stop.

    Under a launcher (torchrun, TF_CONFIG, ...) this process is one rank of a
    data-parallel world (docs/SPEC.md section 11): it trains its rows of every batch,
    the framework averages the gradients, and only rank 0 logs and writes."""
    world = world_from_env()
    run = prepare(model_cls.framework, cfg, given)
    model_cls.check_precision(run.cfg.precision)  # the run's: a resume's is the checkpoint's
    rows = world.rows(run.cfg.batch_size)  # not divisible: refused before joining
    if world.size == 1:
        device = model_cls.setup_device(cfg.device, cfg.threads)
        with checkpoint_lock(run.checkpoint_path):
            return _train(model_cls, run, device, Agreement(world, model_cls.all_sum), rows)
    agree = Agreement(world, model_cls.all_sum, cfg.collective_timeout)
    try:
        with contextlib.ExitStack() as lock:
            with agree.watchdog.armed("joining the world"):
                distributed.JOINED = True
                model_cls.init_world(world, cfg.device, cfg.collective_timeout)
                device = model_cls.setup_device(cfg.device, cfg.threads)
                agree.check_same(config_digest([dataclasses.asdict(run.cfg), run.text_id.sha256]),
                                 "command (flags, text or checkpoint)")
                lock.enter_context(_writer_lock(world, agree, run.checkpoint_path))
            try:
                progress = _train(model_cls, run, device, agree, rows)
            except Stopped:  # saved: leave as a completed run does
                agree.farewell()
                raise
            agree.farewell()
            return progress
    except (CharRnnError, Stopped, KeyboardInterrupt):
        raise
    except Exception as exc:  # a collective that timed out or lost a rank: one line each
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        # TensorFlow's first line is "in user code:"; the reason is then its last.
        reason = (lines[-1] if lines[0].endswith(":") else lines[0])[:300]
        raise CharRnnError(f"rank {world.rank} of {world.size}: {type(exc).__name__}: {reason} "
                           "(another rank failed or did not answer within "
                           f"--collective-timeout {cfg.collective_timeout:g} s)") from None


@contextlib.contextmanager
def _writer_lock(world: World, agree: Agreement, checkpoint_path: Path):
    """Rank 0 holds the checkpoint directory's lock (it alone writes); every rank
    learns whether it got it, so none waits in a collective for a rank that stopped."""
    with contextlib.ExitStack() as stack:
        error = None
        if world.is_main:
            try:
                stack.enter_context(checkpoint_lock(checkpoint_path))
            except CharRnnError as exc:
                error = exc
        agree.check_all(error is None, str(error))
        yield


def _train(model_cls: type[CharRNN], run: Prepared, device: Device, agree: Agreement,
           rows: slice) -> Progress:
    cfg, checkpoint, text_path, text, vocab, model_config = (
        run.cfg, run.checkpoint, run.text_path, run.text, run.vocab, run.model_config)
    world = agree.world
    unknown = vocab.unknown_chars(text)
    ids = vocab.encode(text)
    train_batches, val_batches = make_streams(ids, cfg.batch_size, cfg.seq_len,
                                              cfg.val_fraction, str(text_path))

    model = model_cls(model_config, run.weights, cfg.optim_config(), device=device,
                      seed=cfg.random_seed)
    progress = Progress()
    state = model.zero_state(rows.stop - rows.start)
    if checkpoint is not None:
        restore_native(model, checkpoint.directory)
        progress = checkpoint.progress
        if checkpoint.h.shape[1] == cfg.batch_size:  # its state, whatever world wrote it
            state = model.state_from_numpy(checkpoint.h[:, rows], checkpoint.c[:, rows])

    log_path = cfg.log_path or default_log_path(model_cls.framework)
    log = RunLogger(log_path, model_cls.framework) if world.is_main else SilentLogger()
    header = {
        "train_config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model_config),
        "text_path": str(text_path), "text_chars": len(text), "vocab_size": vocab.size,
        "num_params": model_config.num_params(), "train_batches": len(train_batches),
        "val_batches": len(val_batches) if val_batches else 0,
        "chars_per_batch": train_batches.chars_per_batch,
        "flops_per_char": model_config.flops_per_char(), "versions": model_cls.versions(),
        "device": str(device), "threads": cfg.threads, "world_size": world.size,
        "launcher": world.source, "python": platform.python_version(),
        "platform": platform.platform(), "pid": os.getpid(),
        "restored_from": str(checkpoint.directory) if checkpoint else None,
        "start_epoch": progress.epoch, "start_batch": progress.batch,
        "start_step": progress.step, "text": dataclasses.asdict(run.text_id),
        "stall_factor": STALL_FACTOR,  # what the epochs' "stalls" count, for the report
    }
    log.record("header", **header)
    where = f"{device}, {world.size} processes ({world.source})" if world.size > 1 else device
    log.info(f"{model_cls.framework} {model_cls.framework_version()} on {where}: "
             f"{model_config.num_params():,} parameters, vocab {vocab.size}, "
             f"{len(train_batches)} batches of {cfg.batch_size}x{cfg.seq_len} per epoch, "
             f"text {text_path} ({len(text):,} chars), precision {cfg.precision}")
    if unknown:
        count = int(np.count_nonzero(ids == 0))
        log.info(f"{len(unknown)} distinct characters of the text ({count:,} in all) are not "
                 f"in the vocabulary and train as 'unknown': {''.join(unknown[:20])!r}")
    if checkpoint:
        log.info(f"resuming {checkpoint.directory} at {_where(progress, cfg, len(train_batches))}"
                 + (f", saving to {run.checkpoint_path}"
                    if run.checkpoint_path != checkpoint.directory else ""))
        if progress.epoch >= cfg.num_epochs:
            log.info(f"nothing to train: the run has done its {cfg.num_epochs} epochs; give a "
                     "larger --num-epochs to go on")

    loop = _Loop(model, train_batches, val_batches, cfg, progress, state, log,
                 run.checkpoint_path, vocab, run.text_id, agree, rows,
                 val_ids=split_ids(ids, cfg.val_fraction)[1],
                 best_from=checkpoint.directory if checkpoint else None)
    try:
        with _StopSignals() as signals:
            loop.signals = signals
            while progress.epoch < cfg.num_epochs:
                if cfg.max_steps is not None and progress.step >= cfg.max_steps:
                    break
                loop.run_epoch()
        log.info(f"done: {progress.step} steps, train loss {_fmt(progress.train_loss)}, "
                 f"val loss {_fmt(progress.val_loss)}")
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last save stays intact
        log.info(f"interrupted at epoch {progress.epoch + 1}, batch {progress.batch}")
        raise
    finally:
        log.close()
    return progress


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP ask the loop to stop at the next batch boundary.

    Preemption (Slurm, Kubernetes) sends SIGTERM; a closed terminal SIGHUP. The handler
    only records the signal: the loop finishes the step, saves a checkpoint that resumes
    exactly and raises Stopped. A second SIGTERM or SIGHUP while saving is ignored (the
    save completes); a second Ctrl-C raises KeyboardInterrupt, and the atomic save
    keeps the previous checkpoint whole.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class _Loop:
    """The mutable state of one training run; `state` is always the one after the last step."""

    model: CharRNN
    train_batches: Batches
    val_batches: Batches | None
    cfg: TrainConfig
    progress: Progress
    state: object
    log: RunLogger
    checkpoint_path: Path
    vocab: Vocab
    text_id: TextId  # the text trained on, recorded in every checkpoint
    agree: Agreement  # the ranks' common decisions (one process: its own)
    rows: slice  # this rank's rows of every batch
    val_ids: np.ndarray | None = None  # the validation stream, for --val-window
    # The directory whose best.safetensors the next save carries: the resumed checkpoint's
    # until this run has saved once (None: checkpoint_path's own).
    best_from: Path | None = None
    signals: _StopSignals | None = None
    stopping: int | None = None  # the signal every rank agreed to stop on
    last_save: float = dataclasses.field(default_factory=time.perf_counter)
    saving_s: float = 0.0  # periodic saves within this epoch, left out of its duration

    @functools.cached_property
    def optim(self) -> OptimConfig:
        return self.cfg.optim_config()

    def save(self, reason: str, new_best: bool = False) -> float:
        """Write the checkpoint (and with `new_best`, best.safetensors too); returns how
        long it took (logged: the cost of a save).

        Every rank takes part (the carried state is gathered from all of them); rank 0
        writes, and every rank learns whether it could."""
        start = time.perf_counter()
        world, batch_size = self.agree.world, self.cfg.batch_size
        with self.agree.watchdog.armed("saving a checkpoint"):
            h, c = (self.agree.gather_rows(a, batch_size)
                    for a in self.model.state_to_numpy(self.state))
            error = None
            if world.is_main:
                try:
                    save_checkpoint(self.checkpoint_path, self.model, self.vocab,
                                    self.progress, (h, c), self.cfg, self.text_id,
                                    new_best, self.best_from)
                    self.best_from = None
                except CharRnnError as exc:
                    if world.size == 1:
                        raise
                    error = exc
            self.agree.check_all(error is None, str(error))
        self.last_save = time.perf_counter()
        duration_s = self.last_save - start
        self.log.info(f"checkpoint saved to {self.checkpoint_path} ({reason}, "
                      f"{duration_s:.2f} s)")
        self.log.record("checkpoint", reason=reason, epoch=self.progress.epoch + 1,
                        step=self.progress.step, duration_s=duration_s)
        return duration_s

    def _minutes_due(self) -> bool:
        """Whether --checkpoint-minutes have passed since the last save, by rank 0's
        clock (ranks' clocks differ; the agreement passes rank 0's answer on)."""
        minutes = self.cfg.checkpoint_minutes
        return bool(minutes and self.agree.world.is_main
                    and time.perf_counter() - self.last_save >= 60 * minutes)

    def _stop_if_signalled(self) -> None:
        """Save at this batch boundary and raise Stopped, if the ranks agreed to stop."""
        signum = self.stopping
        if signum is None:
            return
        name = signal.Signals(signum).name
        self.log.info(f"{name} at epoch {self.progress.epoch + 1}, batch {self.progress.batch}")
        self.save(name)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {name}"
        raise Stopped(signum, f"{what}: checkpoint saved to {self.checkpoint_path} "
                              f"(epoch {self.progress.epoch + 1}, batch {self.progress.batch}, "
                              f"step {self.progress.step}); continue with --restore")

    def run_epoch(self) -> None:
        """Train from (progress.epoch, progress.batch) to the end of the epoch or max_steps,
        then validate, log, checkpoint and sample."""
        epoch = self.progress.epoch
        self.saving_s = 0.0
        start = time.perf_counter()
        step_times = self._train_steps(epoch)
        duration_s = time.perf_counter() - start - self.saving_s
        self._stop_if_signalled()
        record = self._evaluate_epoch(epoch, step_times, duration_s)
        if record["complete"]:
            self.progress.epoch += 1
            self.progress.batch = 0
            self.progress.epoch_losses = []
        val_loss, best = record["val/loss"], self.progress.best_val_loss
        new_best = bool(self.cfg.keep_best and record["complete"] and val_loss is not None
                        and (best is None or val_loss < best))
        if new_best:
            self.progress.best_val_loss = val_loss
        self.save("end of epoch" if record["complete"] else "max steps", new_best)
        if new_best:
            self.log.info(f"best val loss so far: {val_loss:.4f}, kept as "
                          f"{self.checkpoint_path / BEST_NAME}")
        # A new Generator each epoch: its warm-up state belongs to these weights.
        record["samples"] = (_log_samples(Generator(self.model, self.vocab), self.cfg, epoch,
                                          self.log) if self.agree.world.is_main else {})
        self.log.record("epoch", **record)

    def _train_steps(self, epoch: int) -> list[float]:
        """The training steps of one epoch from progress.batch on; their durations in s."""
        batches, cfg, progress = self.train_batches, self.cfg, self.progress
        step_times: list[float] = []
        bar = _progress_bar(len(batches), progress.batch, f"epoch {epoch + 1}/{cfg.num_epochs}")
        for j in range(progress.batch, len(batches)):
            if cfg.max_steps is not None and progress.step >= cfg.max_steps:
                break
            x, y = batches.batch(epoch, j)
            x, y = x[self.rows], y[self.rows]
            if cfg.state_reset:
                self.state = zero_rows(self.model, self.state,
                                       reset_rows(cfg, progress.step)[self.rows])
            if self.optim.lr_schedule != "constant":  # the rate of this step's update
                self.model.set_learning_rate(self.optim.learning_rate_at(
                    progress.step + 1, cfg.num_epochs * len(batches)))
            t0 = time.perf_counter()
            with self.agree.watchdog.armed(f"training step {progress.step + 1}"):
                loss, state = self.model.train_step(x, y, self.state)  # a float: synced
                received = self.signals.received if self.signals else None
                # The global batch's loss, and whether any rank must stop or save now.
                loss, stop, minutes_due = self.agree.step(loss, received is not None,
                                                          self._minutes_due())
            step_times.append(time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise CharRnnError(
                    f"loss is {loss} at epoch {epoch + 1}, step {progress.step + 1}: training "
                    "diverged; the last good checkpoint is kept (try a lower --learning-rate)")
            self.state = state
            progress.epoch_losses.append(loss)
            progress.step += 1
            progress.batch = j + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
            if cfg.log_every and progress.step % cfg.log_every == 0:
                self.log.info(f"epoch {epoch + 1}, step {progress.step}: loss {loss:.4f} "
                              f"({bits(loss):.3f} bpc)")
                self.log.record("step", epoch=epoch + 1, step=progress.step,
                                **{"train/loss": loss})
            if stop:  # another rank's signal: stop as it does (SIGTERM, the preemption one)
                self.stopping = received or signal.SIGTERM
                break
            steps_due = cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0
            if (steps_due or minutes_due) and j + 1 < len(batches):  # an epoch's end saves
                self.saving_s += self.save("periodic")
        if bar is not None:
            bar.close()
        return step_times

    def _evaluate_epoch(self, epoch: int, step_times: list[float], duration_s: float) -> dict:
        """Validate, and log the epoch's line; returns its record (without samples)."""
        progress, batches = self.progress, self.train_batches
        complete = progress.batch >= len(batches)
        train_loss = float(np.mean(progress.epoch_losses)) if progress.epoch_losses else None
        val_start = time.perf_counter()
        val_loss = evaluate(self.model, self.val_batches)
        window = None
        if self.cfg.val_window and self.val_batches is not None:
            window = window_loss(self.model, self.val_ids, self.cfg.val_window)
        val_duration_s = time.perf_counter() - val_start
        progress.train_loss, progress.val_loss = train_loss, val_loss
        chars = len(step_times) * batches.chars_per_batch
        record = {
            "epoch": epoch + 1, "step": progress.step, "complete": complete,
            "batches": len(step_times),
            "train/loss": train_loss, "train/bpc": bits(train_loss),
            "val/loss": val_loss, "val/bpc": bits(val_loss),
            "val/window_loss": window,
            "duration_s": duration_s, "chars_per_s": chars / duration_s if duration_s else None,
            "val_duration_s": val_duration_s,
            "first_step_s": step_times[0] if step_times else None,
            **step_time_stats(step_times[1:] or step_times),
        }
        penalty_text = ""
        if self.cfg.l1 or self.cfg.l2:  # the loss stays the cross-entropy; the penalty beside it
            record["train/penalty"] = penalty(self.model.get_weights(), self.model.config,
                                              self.cfg.l1, self.cfg.l2)
            penalty_text = f" + penalty {record['train/penalty']:.4f}"
        self.log.info(
            f"epoch {epoch + 1}/{self.cfg.num_epochs}{'' if complete else ' (partial)'}: "
            f"duration {format_duration(duration_s)}, train loss {_fmt(train_loss)} "
            f"({_fmt(bits(train_loss))} bpc){penalty_text}, val loss {_fmt(val_loss)} "
            f"({_fmt(bits(val_loss))} bpc)"
            + (f", from zeros in {self.cfg.val_window}-char windows {_fmt(window)}"
               if window is not None else "")
            + f", {record['chars_per_s'] or 0:,.0f} chars/s")
        return record


STALL_FACTOR = 5.0  # a step this many times the median is a stall (the machine, not the model)


def step_time_stats(step_times: list[float]) -> dict:
    """Median, p90, p99 and max of the step times (s), and how many steps stalled.

    The first step (compilation, warm-up) is left out by the caller. On a shared
    machine the mean hides a few very slow steps; the median-based epoch time does not.
    """
    if not step_times:
        return {"step_s_median": None, "step_s_p90": None, "step_s_p99": None,
                "step_s_max": None, "stalls": 0}
    times = np.asarray(step_times)
    median = float(np.median(times))
    return {"step_s_median": median, "step_s_p90": float(np.percentile(times, 90)),
            "step_s_p99": float(np.percentile(times, 99)), "step_s_max": float(times.max()),
            "stalls": int((times > STALL_FACTOR * median).sum())}


def _log_samples(generator: Generator, cfg: TrainConfig, epoch: int, log: RunLogger) -> dict:
    """Short samples at a few temperatures, from a fixed seed, into the log."""
    if cfg.sample_length == 0:
        return {}
    samples = {}
    for temperature in SAMPLE_TEMPERATURES:
        rng = np.random.default_rng([cfg.random_seed, epoch])
        text = generator.generate("\n", cfg.sample_length, rng, temperature=temperature,
                                  top_k=0)[0]
        samples[str(temperature)] = text
        log.info(f"sample at temperature {temperature}:\n{text}\n")
    return samples


def _where(progress: Progress, cfg: TrainConfig, num_batches: int) -> str:
    """Where a run stands, as the resume banner says it: the next batch to train."""
    if progress.epoch >= cfg.num_epochs:
        return f"the end of epoch {progress.epoch} (after {progress.step} steps)"
    return (f"epoch {progress.epoch + 1} of {cfg.num_epochs}, batch {progress.batch + 1} of "
            f"{num_batches} (after {progress.step} steps)")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
