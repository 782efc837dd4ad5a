"""What a run records, and what `train --restore` and `--init-from` accept (docs/SPEC.md
section 10, "Resuming").

A checkpoint holds the run as it was resolved, never as typed: the text (its absolute
path, size and SHA-256), the vocabulary (in `model.safetensors`), and every train flag
with the model sizes, cell and optimiser filled in. A resume takes all of it from
there. Each flag's rule (`common.config.RUN`, `SETTING`, `COMMAND`) says what a resume
does with it when it is given again:

    >>> from common.config import TrainConfig
    >>> saved = TrainConfig(batch_size=8, seq_len=16, num_epochs=3, optimizer="adam",
    ...                     cell="lstm", text_path="/data/my.txt")
    >>> resumed = merge_resumed(TrainConfig(num_epochs=5), frozenset({"num_epochs"}),
    ...                         saved, "ck")
    >>> resumed.batch_size, resumed.num_epochs
    (8, 5)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from charrnn.common.config import COMMAND, RUN, SETTING, ModelConfig, TrainConfig, resume_rule
from charrnn.common.errors import CharRnnError
from charrnn.common.text import (
    TINYSHAKESPEARE_SHA256,
    TextId,
    Vocab,
    default_corpus_path,
    read_text,
)
from charrnn.common.weights import Portable

# Compared by what they mean, not by the value typed: the text by its SHA-256
# (`resume_text`), the vocabulary mode by the vocabulary it chooses (`check_vocab`).
_COMPARED_ELSEWHERE = ("text_path", "vocab")
_MODEL_SIZES = ("embedding_size", "rnn_size", "num_layers", "cell")


def flags_differing_from_defaults(cfg: TrainConfig) -> frozenset[str]:
    """The fields of `cfg` that differ from TrainConfig's defaults: what "given" means
    for a config built in Python rather than parsed from a command line."""
    default = TrainConfig()
    return frozenset(f.name for f in dataclasses.fields(TrainConfig)
                     if getattr(cfg, f.name) != getattr(default, f.name))


def resolved(cfg: TrainConfig, model_config: ModelConfig, text_id: TextId) -> TrainConfig:
    """`cfg` as the run uses it, for the checkpoint and the log: the model's sizes and
    cell, the optimiser with its own parameter (decay rate or momentum), the text's
    absolute path."""
    optim = cfg.optim_config()
    return dataclasses.replace(
        cfg, embedding_size=model_config.embedding_size, rnn_size=model_config.rnn_size,
        num_layers=model_config.num_layers, drop_rate=model_config.drop_rate,
        cell=model_config.cell, optimizer=optim.optimizer,
        decay_rate=optim.decay_rate if optim.optimizer == "rmsprop" else None,
        momentum=optim.momentum if optim.optimizer == "sgd" else None,
        text_path=text_id.path)


def _shown(value) -> str:
    return "(unset)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def new_run_hint(directory: str | Path) -> str:
    return (f"start a new run from its weights with --init-from "
            f"{Path(directory) / 'model.safetensors'}")


def merge_resumed(cfg: TrainConfig, given: frozenset[str], saved: TrainConfig,
                  directory: str | Path) -> TrainConfig:
    """The config of a resumed run: the checkpoint's `saved` run, with the SETTING flags
    that were given and every COMMAND flag taken from `cfg`.

    A RUN flag given with another value than the checkpoint's is refused in one line
    that names the flag, both values and what to do instead."""
    if cfg.init_from is not None:
        raise CharRnnError(f"--init-from starts a new run and --restore continues {directory}'s: "
                           "give one of them")
    updates = {}
    for f in dataclasses.fields(TrainConfig):
        rule, name = resume_rule(f), f.name
        if rule == COMMAND or (rule == SETTING and name in given):
            updates[name] = getattr(cfg, name)
        elif (rule == RUN and name in given and name not in _COMPARED_ELSEWHERE
              and getattr(cfg, name) != getattr(saved, name)):
            raise CharRnnError(
                f"{directory}: {_flag(name)} {_shown(getattr(cfg, name))} differs from the "
                f"run it holds ({_flag(name)} {_shown(getattr(saved, name))}): a resume "
                f"continues that run, so leave the flag out, or {new_run_hint(directory)}")
    updates["init_from"] = saved.init_from  # where the run began, kept for the record
    return dataclasses.replace(saved, **updates)


def resume_text(cfg: TrainConfig, given: frozenset[str], saved: TextId, vocab: Vocab,
                directory: str | Path) -> tuple[Path, str, TextId]:
    """The run's text, found and checked: the file at the saved path, or the one
    --text-path names (for a text that moved), with the SHA-256 the checkpoint holds.
    tinyshakespeare is found anew (its SHA-256 is known) when the saved path is gone."""
    if "text_path" in given and cfg.text_path:
        path = Path(cfg.text_path)
    else:
        path = Path(saved.path)
        if not path.exists() and saved.sha256 == TINYSHAKESPEARE_SHA256:
            path = default_corpus_path()
    if not path.exists():
        raise CharRnnError(f"{directory}: its training text {path} is missing; if it moved, "
                           "name the new place with --text-path (accepted when its SHA-256 "
                           "matches)")
    text = read_text(path)
    found = TextId.of(path, text)
    if found.sha256 != saved.sha256:
        unknown = vocab.unknown_chars(text)
        outside = (f"; {len(unknown)} of its distinct characters are outside the run's "
                   f"vocabulary ({', '.join(repr(c) for c in unknown[:5])})" if unknown else "")
        raise CharRnnError(
            f"{path}: not the text {directory} was trained on ({found.short()}, the run's "
            f"{saved.short()}){outside}; resume on that text, or {new_run_hint(directory)}")
    return path, text, found


def check_vocab(cfg: TrainConfig, given: frozenset[str], text: str, vocab: Vocab,
                source: str | Path) -> None:
    """A --vocab given with --restore or --init-from must choose the file's vocabulary."""
    if "vocab" in given and Vocab.choose(text, cfg.vocab).chars != vocab.chars:
        raise CharRnnError(f"{source}: --vocab {cfg.vocab} would choose another vocabulary "
                           f"than the {vocab.size} ids the model was trained with (leave "
                           "--vocab out: the model's is used)")


def check_init_from(cfg: TrainConfig, given: frozenset[str], portable: Portable,
                    source: str | Path) -> None:
    """--init-from takes the file's model: a size or cell flag that differs is refused."""
    for name in _MODEL_SIZES:
        held = getattr(portable.config, name)
        if name in given and getattr(cfg, name) != held:
            raise CharRnnError(
                f"{source}: holds a model with {_flag(name)} {held}, not the "
                f"{_flag(name)} {getattr(cfg, name)} asked for: leave the flag out to start "
                "from its weights, or leave --init-from out to train a new model of that size")
