"""The points of a sweep: how a framework's cost grows with the model and with the batch.

    python -m benchmarks.run_all --profile sweep
    python -m benchmarks.run_all --profile sweep --frameworks pytorch,numpy \\
        --rnn-sizes 64,128 --batch-sizes 1,16

A sweep trains the default spec at every point of two axes that cross at the
default model: --rnn-size over RNN_SIZES at the default --batch-size, and
--batch-size over BATCH_SIZES at the default --rnn-size (the crossing point is
trained once). Each point is a framework run of its own (benchmarks.child), with
its own initial weights (an --rnn-size shapes them) and its own record, which says
which point it is (`"point": {"rnn_size": 256, "batch_size": 64}`), so --resume
skips the points already recorded. Single-stream generation is measured on the
rnn-size axis only: a batch size does not change the generating model.
Standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from charrnn.common.config import TrainConfig

RNN_SIZES = (64, 128, 256, 512)
BATCH_SIZES = (1, 16, 64, 256)
_DEFAULTS = TrainConfig()  # the sizes each axis holds fixed: the default spec's


@dataclass(frozen=True)
class Point:
    """One model and batch size of a sweep."""

    rnn_size: int
    batch_size: int

    @property
    def key(self) -> str:
        """A name for directories and --resume: "rnn256-batch64"."""
        return f"rnn{self.rnn_size}-batch{self.batch_size}"

    def apply(self, train: TrainConfig) -> TrainConfig:
        """`train` at this point's sizes (over any --extra-train-args: the point wins)."""
        return dataclasses.replace(train, rnn_size=self.rnn_size, batch_size=self.batch_size)

    def as_dict(self) -> dict:
        return {"rnn_size": self.rnn_size, "batch_size": self.batch_size}


def point_of(record: dict) -> Point | None:
    """The point a framework record was measured at; None for a run that is no sweep's."""
    p = record.get("point")
    return Point(int(p["rnn_size"]), int(p["batch_size"])) if isinstance(p, dict) else None


def point_key(record: dict) -> str:
    """The point's key of a record ("" outside a sweep): with framework and repeat, what
    identifies a run."""
    point = point_of(record)
    return point.key if point else ""


@dataclass(frozen=True)
class Grid:
    """The two axes of a sweep."""

    rnn_sizes: tuple[int, ...] = RNN_SIZES  # at batch_size
    batch_sizes: tuple[int, ...] = BATCH_SIZES  # at rnn_size
    rnn_size: int = _DEFAULTS.rnn_size  # held fixed while the batch size grows
    batch_size: int = _DEFAULTS.batch_size  # held fixed while the model grows

    def points(self) -> list[Point]:
        """The rnn-size axis, then the rest of the batch-size axis, each point once."""
        points = [Point(h, self.batch_size) for h in self.rnn_sizes]
        points += [Point(self.rnn_size, b) for b in self.batch_sizes]
        return list(dict.fromkeys(points))

    def on_rnn_axis(self, point: Point) -> bool:
        return point.batch_size == self.batch_size

    def on_batch_axis(self, point: Point) -> bool:
        return point.rnn_size == self.rnn_size

    def axis_sizes(self, axis: str) -> list[int]:
        """The sizes along "rnn_size" or "batch_size", the crossing point included where the
        other axis measures it (--batch-sizes 1,16 still shows batch 64 at rnn size 128)."""
        on = self.on_rnn_axis if axis == "rnn_size" else self.on_batch_axis
        return sorted({getattr(p, axis) for p in self.points() if on(p)})

    def as_dict(self) -> dict:
        return {"rnn_sizes": list(self.rnn_sizes), "batch_sizes": list(self.batch_sizes),
                "rnn_size": self.rnn_size, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, d: dict | None) -> Grid:
        """The grid a run record names (the default one for a record without it)."""
        if not isinstance(d, dict):
            return cls()
        return cls(tuple(d["rnn_sizes"]), tuple(d["batch_sizes"]), d["rnn_size"],
                   d["batch_size"])


def parse_sizes(text: str, flag: str) -> tuple[int, ...]:
    """"64,128,256" -> (64, 128, 256): positive, no repeats, in the order given; one line
    naming the flag otherwise."""
    try:
        sizes = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise SystemExit(f"error: {flag} {text}: expected comma-separated whole numbers, "
                         "e.g. 64,128,256") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise SystemExit(f"error: {flag} {text}: expected distinct sizes >= 1")
    return sizes
