"""The one command line of every framework (docs/SPEC.md section 6), generated from `common.config`.

    python <framework>_model.py train|generate|repl|export [flags]

Errors a user can act on are one line on stderr and exit status 2; Ctrl-C
during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path

from charrnn.common import distributed
from charrnn.common.config import ExportConfig, GenerateConfig, TrainConfig
from charrnn.common.errors import CharRnnError, Stopped
from charrnn.common.fileio import describe_os_error
from charrnn.common.logs import to_stderr

COMMANDS = {
    "train": (TrainConfig, "train a model (resumable with --restore)"),
    "generate": (GenerateConfig, "generate text from a checkpoint or portable file"),
    "repl": (GenerateConfig, "read seeds line by line and print completions"),
    "export": (ExportConfig, "write a checkpoint's portable .safetensors file"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, positive: bool, non_negative: bool, name: str):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} "
                                             f"{kind.__name__}") from None
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        if non_negative and value < 0:
            raise argparse.ArgumentTypeError(f"{text} must be >= 0")
        return value
    convert.__name__ = name  # argparse names the type in its messages
    return convert


def _base_type(annotation):
    """int for `int`, `int | None`, 'int | None' (annotations are strings here)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"__builtins__": __builtins__})  # our own annotations
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_dataclass_flags(parser: argparse.ArgumentParser, config_cls,
                        defaults: bool = True) -> None:
    """One --flag-name per field of `config_cls`, with its help, default and checks.
    `defaults=False` leaves a flag that is not given out of the parsed namespace."""
    for f in dataclasses.fields(config_cls):
        meta = dict(f.metadata)
        meta.pop("resume", None)
        aliases = meta.pop("aliases", ())
        help_text = meta.pop("help", "")
        positive = meta.pop("positive", False)
        non_negative = meta.pop("non_negative", False)
        kind = _base_type(f.type)
        if "default" not in help_text:
            help_text = f"{help_text} (default: {f.default})"
        kwargs = {"default": f.default if defaults else argparse.SUPPRESS, "help": help_text}
        if kind in (int, float):
            kwargs["type"] = _number(kind, positive, non_negative, kind.__name__)
            kwargs["metavar"] = "N" if kind is int else "X"
        kwargs.update(meta)
        parser.add_argument("--" + f.name.replace("_", "-"), *aliases, dest=f.name, **kwargs)


def build_parser(prog: str, defaults: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Character-level LSTM language model "
                     "(char-rnn-bench); the same flags in every framework.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (config_cls, help_text) in COMMANDS.items():
        add_dataclass_flags(sub.add_parser(name, help=help_text, description=help_text),
                            config_cls, defaults)
    return parser


def parse_args(argv, prog: str):
    """(command, config dataclass) from argv."""
    parser = build_parser(prog)
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    try:
        return command, COMMANDS[command][0](**args)
    except CharRnnError as exc:  # flags that do not go together, e.g. --momentum with adam
        parser.error(str(exc))


def _flag_text(value) -> str:
    """A flag's value as the parser reads it back exactly: 0.0 -> "0", 1e-05 -> "1e-05"."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def to_argv(cfg) -> list[str]:
    """The flags that give a config dataclass `cfg` (TrainConfig, GenerateConfig, ...): one
    --flag-name value per field that differs from its default, in field order, so that
    parse_args([command, *to_argv(cfg)]) returns `cfg` again. The other direction of
    parse_args, for a program that starts the command (the benchmark's runner)."""
    argv = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        name = "--" + f.name.replace("_", "-")
        if f.metadata.get("action") == "store_true":
            argv.append(name)
        elif value is None:
            raise ValueError(f"{name}: None is not a value the command line can give")
        else:
            argv += [name, _flag_text(value)]
    return argv


def flags_given(argv) -> frozenset[str]:
    """The config fields that `argv` sets explicitly (abbreviations and `--flag=value`
    included), whatever their value: a resume refuses a run flag given with a value
    other than the checkpoint's, and takes the checkpoint's for one not given."""
    args = vars(build_parser("charrnn", defaults=False).parse_args(argv))
    return frozenset(args) - {"command"}


def main(model_cls, argv: list[str] | None = None, variants: dict | None = None,
         prog: str | None = None) -> None:
    """Entry point of every `<framework>_model.py` and of the `charrnn` command;
    `variants` are the framework's other implementations, run when CHARRNN_VARIANT
    names one (common.registry)."""
    from charrnn.common.registry import pick_variant
    try:
        model_cls = pick_variant(model_cls, variants)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        sys.exit(2)
    prog = prog or (Path(sys.argv[0]).name if argv is None
                    else f"{model_cls.framework}_model.py")
    argv = sys.argv[1:] if argv is None else argv
    command, cfg = parse_args(argv, prog)
    exit_process(_run(model_cls, command, cfg, flags_given(argv)))


def exit_process(status: int) -> None:
    """Exit with `status`. A process that joined a data-parallel world leaves at once
    (after flushing): the frameworks' distributed runtimes can wait at interpreter exit
    for ranks that are already gone (TensorFlow's coordination service did, for ever)."""
    if distributed.JOINED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _run(model_cls, command: str, cfg, given: frozenset[str]) -> int:
    """Run `command` (`given`: the flags typed, for a resume); the process's exit status."""
    try:
        if command == "train":
            from charrnn.common.train import train
            train(model_cls, cfg, given)
        elif command == "generate":
            from charrnn.common.generate import run_generate
            run_generate(model_cls, cfg)
        elif command == "repl":
            from charrnn.common.generate import run_repl
            run_repl(model_cls, cfg)
        else:
            from charrnn.common.export import run_export
            run_export(model_cls, cfg)
    except CharRnnError as exc:
        to_stderr(f"error: {exc}")
        return 2
    except Stopped as exc:  # SIGTERM, SIGHUP or Ctrl-C, after saving
        to_stderr(str(exc))
        return 128 + exc.signum
    except KeyboardInterrupt:
        to_stderr("interrupted")
        return 130
    except BrokenPipeError:  # `... generate | head`: the reader left, nothing is wrong
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file that cannot be read or written: the path and the reason
        to_stderr(f"error: {describe_os_error(exc)}")
        return 2
    return 0
