"""The loss-curve picture of a run, from its CSV log: one panel per logged loss, raw and smoothed."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PREFIX = "train/"


def metrics_files(csv_logs: Path) -> list[Path]:
    """The CSV logger's ``version_N/metrics.csv`` files in launch order (a resumed run adds one per launch)."""
    return sorted(csv_logs.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.removeprefix("version_")))


def read_losses(metrics_csvs: Sequence[Path]) -> dict[str, dict[int, float]]:
    """``{loss name: {step: value}}`` for every ``train/*`` column; a step logged again by a later launch keeps the later value."""
    losses: dict[str, dict[int, float]] = {}
    for path in metrics_csvs:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for column, value in row.items():
                    if column.startswith(PREFIX) and value not in ("", None):
                        losses.setdefault(column.removeprefix(PREFIX), {})[int(row["step"])] = float(value)
    return losses


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """TensorBoard's exponential moving average, debiased at the start."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_losses(metrics_csvs: Sequence[Path], png: Path, title: str) -> Path:
    losses = read_losses(metrics_csvs)
    names = [n for n in ("loss", "itc", "itm", "icg", "msp", "lm") if n in losses] + sorted(set(losses) - {"loss", "itc", "itm", "icg", "msp", "lm", "temp"})
    if not names:
        raise ValueError(f"{[str(p) for p in metrics_csvs]}: no train/* losses logged")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps = sorted(losses[name])
        values = [losses[name][s] for s in steps]
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1)
        ax.plot(steps, smooth(values), color="tab:blue", linewidth=2)
        tenth = max(1, len(values) // 10)  # noisy per-batch losses: compare the first and last tenths' means
        first, last = sum(values[:tenth]) / tenth, sum(values[-tenth:]) / tenth
        ax.set_title(f"{name}  (mean of first / last {tenth}: {first:.3g} -> {last:.3g})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
