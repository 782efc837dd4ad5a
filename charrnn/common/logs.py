"""The two log files of every run (docs/SPEC.md section 7).

`<name>.log` is for people (and mirrors to stderr); `<name>.jsonl` beside it has
one JSON object per line for the benchmark and plotting code: a header with
the config, versions, device and threads, then one record per epoch (and per
`--log-every` steps).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

LN2 = math.log(2.0)


def bits(nats: float | None) -> float | None:
    """Nats per character -> bits per character."""
    return None if nats is None else nats / LN2


def format_duration(seconds: float) -> str:
    """H:MM:SS.s, like the original suite's logs."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}"


def jsonl_path(log_path: str | Path) -> Path:
    return Path(log_path).with_suffix(".jsonl")


def to_stderr(message: str) -> bool:
    """Print `message` on stderr; False if stderr is closed (`train ... 2>&1 | head`, a
    terminal gone). Then stderr and stdout, where they are the same closed pipe, are
    pointed at /dev/null, so that no later write (ours, a framework's, the interpreter's
    last flush) fails: a reader that left must not stop a run."""
    if sys.stderr is None:  # started with stderr closed
        return False
    try:
        print(message, file=sys.stderr, flush=True)
        return True
    except (OSError, ValueError):  # EPIPE, EIO; ValueError: the stream was closed
        _silence(sys.stderr)
        return False


def _silence(stream) -> None:
    """Point `stream`'s file descriptor (and stdout's, if it is the same file) at /dev/null."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        targets = [fd]
        try:
            same = os.path.sameopenfile(fd, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            same = False
        if same:
            targets.append(sys.stdout.fileno())
        for target in targets:
            os.dup2(devnull, target)
    finally:
        os.close(devnull)


class RunLogger:
    """Appends to `log_path` (text) and its `.jsonl` twin; each line is flushed at once.
    Human lines are mirrored to stderr while it is open; the files get them regardless."""

    def __init__(self, log_path: str | Path, framework: str):
        self.framework = framework
        self.text_path = Path(log_path)
        self.text_path.parent.mkdir(parents=True, exist_ok=True)
        self._text = open(self.text_path, "a", encoding="utf-8")
        self._json = open(jsonl_path(log_path), "a", encoding="utf-8")
        self._mirror = True  # stderr still open

    def _write(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in message.splitlines() or [""]:
            self._text.write(f"{stamp} {self.framework}: {line}\n")
        self._text.flush()

    def info(self, message: str) -> None:
        """A human line, timestamped, to the text log and stderr."""
        self._write(message)
        if self._mirror and not to_stderr(message):
            self._mirror = False
            self._write(f"stderr is closed: training goes on, logging to {self.text_path} "
                        "only")

    def record(self, kind: str, **fields) -> None:
        """One JSON object: {"kind": ..., "framework": ..., "time": ..., **fields}."""
        obj = {"kind": kind, "framework": self.framework, "time": time.time(), **fields}
        self._json.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
        self._json.flush()

    def close(self) -> None:
        self._text.close()
        self._json.close()


class SilentLogger:
    """RunLogger's interface, writing nothing: the logger of a data-parallel rank other
    than 0 (docs/SPEC.md section 11: only rank 0 logs)."""

    def info(self, message: str) -> None:
        pass

    def record(self, kind: str, **fields) -> None:
        pass

    def close(self) -> None:
        pass


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a .jsonl log, skipping a truncated last line."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_training_log(path: str | Path) -> tuple[dict | None, list[dict], list[list[float]]]:
    """(header, epoch records without samples, [[step, elapsed training s, loss], ...]).

    Only the last run in the file counts (logs are appended to), continued through
    any `--restore` of it. A step's elapsed time counts training only (no
    validation or checkpointing): the wall-clock times of the step records, anchored
    at each epoch's end by the epoch's duration_s.
    """
    path = jsonl_path(path)
    if not path.exists():
        return None, [], []
    header, epochs, steps, pending = None, [], [], []
    elapsed_before = 0.0
    for rec in read_jsonl(path):
        kind = rec.get("kind")
        if kind == "header":
            if rec.get("restored_from") is None:  # a new run starts: forget the earlier one
                epochs, steps, pending, elapsed_before = [], [], [], 0.0
            header = {k: v for k, v in rec.items() if k not in ("kind", "time")}
        elif kind == "step":
            pending.append(rec)
        elif kind == "epoch":
            epochs.append({k: v for k, v in rec.items() if k not in ("kind", "samples")})
            if pending:
                # Training of this epoch ended duration_s after it began; steps after the
                # last logged one (if any) took about step_s_median each.
                after = rec["step"] - pending[-1]["step"]
                t_end = pending[-1]["time"] + after * (rec.get("step_s_median") or 0.0)
                for p in pending:
                    elapsed = elapsed_before + rec["duration_s"] - (t_end - p["time"])
                    steps.append([p["step"], round(max(elapsed, 0.0), 4), p["train/loss"]])
            elapsed_before += rec.get("duration_s") or 0.0
            pending = []
    return header, epochs, steps
