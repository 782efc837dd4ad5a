"""Loss curves from training logs: train and validation loss per epoch, one colour per framework.

    python -m benchmarks.plot logs/numpy_model.jsonl logs/pytorch_model.log --output loss.png

A `.log` path stands for its `.jsonl` twin (common.logs). The benchmark report draws
its curves with the same functions, from the records of `run_all`, and a sweep's
measurements against model and batch size with `plot_lines`. matplotlib (the
modern environment) is imported only to draw, so the runner can use the log reader.
"""

from __future__ import annotations

if __name__ == "__main__":  # from any Python: re-run under the environment that has matplotlib
    from charrnn.common.bootstrap import require_environment
    require_environment("modern", "matplotlib",
                        "make setup, or pip install 'char-rnn-bench[bench]'")

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.common.logs import jsonl_path, read_training_log


@dataclass
class Curve:
    """One framework's losses: per epoch, and (if the run logged them) per step."""

    name: str
    train_batches: int | None  # per epoch, to put steps on the epoch axis
    epochs: list[dict] = field(default_factory=list)  # epoch records (common.train)
    steps: list[list[float]] = field(default_factory=list)  # [step, elapsed training s, loss]

    def epoch_points(self) -> list[tuple[float, float | None, float | None, float]]:
        """(epochs trained, train loss, val loss, training seconds so far) at each epoch end.

        A partial epoch (--max-steps) ends at a fraction: steps / train_batches.
        """
        points, elapsed = [], 0.0
        for e in self.epochs:
            elapsed += e.get("duration_s") or 0.0
            x = e["step"] / self.train_batches if self.train_batches else float(e["epoch"])
            points.append((x, e.get("train/loss"), e.get("val/loss"), elapsed))
        return points


def curve_from_log(path: str | Path) -> Curve:
    header, epochs, steps = read_training_log(path)
    if header is None and not epochs:
        raise SystemExit(f"error: {jsonl_path(path)}: no training records (missing or empty)")
    name = (header or {}).get("framework") or (epochs[0].get("framework") if epochs else None)
    return Curve(name or Path(path).stem, (header or {}).get("train_batches"), epochs, steps)


# ---------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _colors(plt) -> list:
    """One colour per framework for up to 20: tab20's dark halves (tab10's colours), then
    its light ones. The default cycle has ten, and the eleventh row (mxnet) came out in
    numpy's blue."""
    tab20 = plt.get_cmap("tab20").colors
    return [*tab20[0::2], *tab20[1::2]]


def plot_losses(curves: list[Curve], output: str | Path, x: str = "epoch",
                title: str | None = None) -> Path:
    """Train (solid) and validation (dashed) loss against epochs or training seconds.

    Frameworks that agree (same weights, same batches) draw the same curve on the
    epoch axis; the time axis tells them apart.

    `x` is "epoch" or "time". Step losses are drawn where the run logged them (a
    partial epoch then still shows a curve); otherwise one point per epoch.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colors = _colors(plt)
    for i, curve in enumerate(curves):
        color = colors[i % len(colors)]
        points = curve.epoch_points()
        if curve.steps and curve.train_batches:
            xs = [s[0] / curve.train_batches if x == "epoch" else s[1] for s in curve.steps]
            ax.plot(xs, [s[2] for s in curve.steps], color=color, lw=1.2, label=curve.name)
        else:
            ax.plot([p[0] if x == "epoch" else p[3] for p in points], [p[1] for p in points],
                    color=color, marker="o", ms=3, label=curve.name)
        val = [p for p in points if p[2] is not None]
        if val:
            ax.plot([p[0] if x == "epoch" else p[3] for p in val], [p[2] for p in val],
                    color=color, ls="--", marker="s", ms=4)
    xs = [v for line in ax.get_lines() for v in line.get_xdata() if v > 0]
    log_time = x == "time" and xs and max(xs) / min(xs) > 50  # one slow framework hides the rest
    if log_time:
        ax.set_xscale("log")
    ax.set_xlabel("epochs" if x == "epoch" else "training time (s, validation excluded"
                  + (", log scale)" if log_time else ")"))
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(title or ("Loss per epoch" if x == "epoch" else "Loss versus training time"))
    ax.grid(alpha=0.3)
    if curves:
        # One entry per framework (its colour); the line style says train or validation.
        from matplotlib.lines import Line2D
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="black", lw=1.2),
                    Line2D([], [], color="black", ls="--", marker="s", ms=4)]
        labels += ["train (solid)", "validation (dashed)"]
        ax.legend(handles, labels, fontsize=7, ncol=2 if len(curves) > 4 else 1)
    return _save(fig, output)


def _save(fig, output: str | Path) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    _pyplot().close(fig)
    return output


def plot_throughput(rows: list[tuple[str, float | None, float | None]], output: str | Path,
                    title: str = "Throughput") -> Path:
    """Two bar charts: training and generation characters per second, fastest first."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * max(len(rows), 3) + 1.4), dpi=110)
    for ax, col, label in ((axes[0], 1, "training chars/s"), (axes[1], 2, "generation chars/s")):
        data = sorted(((r[0], r[col]) for r in rows if r[col]), key=lambda r: r[1])
        names, values = [d[0] for d in data], [d[1] for d in data]
        bars = ax.barh(names, values, color="tab:blue" if col == 1 else "tab:green")
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}",
                    va="center", fontsize=7)
        ax.set_xlabel(label)
        # Thousands as "150k": full numbers on the axis run into each other.
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, output)


@dataclass
class Line:
    """One line of `plot_lines`: a framework's values at the sizes it has them."""

    name: str
    xs: list[float]
    ys: list[float]


def plot_lines(lines: list[Line], output: str | Path, *, xlabel: str, ylabel: str, title: str,
               log_y: bool = False, percent: bool = False,
               reference: Line | None = None) -> Path:
    """One line per framework against a size axis (log 2, ticks at the sizes measured);
    `reference` (a bound, say) in black dashes; `percent` shows fractions as 12%."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colors = _colors(plt)
    for i, line in enumerate(lines):
        ax.plot(line.xs, line.ys, marker="o", ms=4, lw=1.4, label=line.name,
                color=colors[i % len(colors)])
    if reference is not None:
        ax.plot(reference.xs, reference.ys, color="black", ls="--", lw=1.2,
                label=reference.name)
    ax.set_xscale("log", base=2)
    sizes = sorted({x for line in lines for x in line.xs})
    if sizes:
        ax.set_xticks(sizes, [f"{x:g}" for x in sizes])
        ax.minorticks_off()
    if log_y:
        ax.set_yscale("log")
        # Plain numbers (2,000, not 2x10^3); the 2s and 5s between powers of ten labelled
        # too, since a sweep's values often span less than a decade.
        ax.yaxis.set_major_formatter(lambda v, _: _plain(v))
        ax.yaxis.set_minor_formatter(lambda v, _: _plain(v) if f"{v:.0e}"[0] in "25" else "")
    if percent:
        ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:g}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if lines or reference is not None:
        ax.legend(fontsize=7, ncol=2 if len(lines) > 5 else 1)
    return _save(fig, output)


def _plain(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="training .jsonl logs (or their .log twins)")
    parser.add_argument("--output", "-o", default="loss.png", help="PNG to write")
    parser.add_argument("--x", choices=("epoch", "time"), default="epoch",
                        help="x axis: epochs, or training seconds")
    parser.add_argument("--title", help="plot title")
    args = parser.parse_args(argv)
    curves = [curve_from_log(p) for p in args.logs]
    path = plot_losses(curves, args.output, x=args.x, title=args.title)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
