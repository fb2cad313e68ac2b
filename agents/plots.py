"""Learning curves and return charts as PNG files (matplotlib, headless), written atomically.

:func:`save_curves` draws named series of (x, mean[, std]) on one axis; :func:`plot_progress`
turns an SB3 run's ``progress.csv`` into its learning curve (imagined or real return per step,
and the periodic real evaluations when there are any); :func:`save_bars` draws one mean +- std
bar per policy.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from astra_gym.utils.atomic import atomic_write

__all__ = ["save_curves", "save_bars", "plot_progress"]

Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]


def save_curves(series: Mapping[str, Series], path: str | os.PathLike, xlabel: str, ylabel: str, title: str) -> Path:
    """Draws each ``name: (x, mean, std or None)`` as a line (with a +-std band) and saves a PNG.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (x, mean, std) in series.items():
        if not len(x):
            continue
        ax.plot(x, mean, marker="o" if len(x) < 30 else None, label=name)
        if std is not None:
            mean, std = np.asarray(mean, float), np.asarray(std, float)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def save_bars(
    names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: str | os.PathLike,
    xlabel: str,
    title: str,
    reference: float | None = None,
    reference_label: str = "",
) -> Path:
    """One horizontal mean +- std bar per name (top to bottom), an optional dashed reference line.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    ax.barh(list(names), mean, xerr=std, color="tab:blue")
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--", label=reference_label)
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def _pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Lays out, writes ``fig`` atomically as a 256-colour palette PNG and closes it.

    Line charts use a few dozen colours, so the palette looks the same as true colour at about a
    third of the bytes (results are kept in git).
    """
    from PIL import Image  # matplotlib's own dependency

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    atomic_write(path, lambda tmp: image.save(tmp, format="png", optimize=True))
    return Path(path)


def _column(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r[x]), float(r[y])) for r in rows if r.get(x) and r.get(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_progress(progress_csv: str | os.PathLike, path: str | os.PathLike, inside: bool) -> Path:
    """The learning curve of an SB3 run from its ``progress.csv``.

    Args:
        progress_csv: SB3's CSV log (``time/total_timesteps``, ``rollout/ep_rew_mean``, ``eval/mean_reward``).
        path: PNG to write.
        inside: The run trained inside the world model (its episode returns are imagined).
    """
    with open(progress_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    train_label = "imagined episode return (reward model)" if inside else "real episode return"
    series: dict[str, Series] = {train_label: (*_column(rows, "time/total_timesteps", "rollout/ep_rew_mean"), None)}
    eval_x, eval_y = _column(rows, "time/total_timesteps", "eval/mean_reward")
    if eval_x:
        series["real evaluation return"] = (eval_x, eval_y, None)
    where = "inside the world model" if inside else "in the real simulator"
    return save_curves(series, path, "env steps", "return", f"PPO trained {where}")
