"""Plots people look at: reward maps (true / posterior mean / posterior sd) and the SVI loss curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig: plt.Figure, path: Path, suptitle: str = "") -> Path:
    """Lay out, write ``path`` as PNG and close the figure (every plot here ends so)."""
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reward_maps(
    grid_shape: tuple[int, int],
    panels: Sequence[tuple[str, np.ndarray]],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Side-by-side heat maps of per-state values on a grid (row 0 at the top), one colour bar each.

    Args:
        grid_shape: ``(rows, cols)``.
        panels: ``(title, values of shape (rows * cols,))`` for each map.
        path: PNG to write.
        title: figure title.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels, strict=True):
        image = ax.imshow(np.asarray(values).reshape(grid_shape), cmap="viridis")
        ax.set_title(name)
        ax.set_xticks(range(grid_shape[1]))
        ax.set_yticks(range(grid_shape[0]))
        ax.tick_params(labelsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path, title)


def plot_loss_curve(elbo: Sequence[float], validation: Sequence[float], validation_step: Sequence[int],
                    best_step: int, path: Path) -> Path:
    """Training loss (negative ELBO, log scale) and validation NLL per step, with the kept state marked."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = np.arange(1, len(elbo) + 1)
    ax_train.plot(steps, elbo, lw=0.8)
    ax_train.set_yscale("symlog")
    ax_train.set_xlabel("step")
    ax_train.set_ylabel("-ELBO (minibatch estimate)")
    ax_val.plot(validation_step, validation, marker="o", ms=3)
    ax_val.axvline(best_step, color="k", ls="--", lw=0.8, label=f"kept: step {best_step}")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("validation NLL per item (sum over types)")
    ax_val.legend()
    return _save(fig, path)


def plot_mean_scatter(
    mean_a: np.ndarray,
    lower_a: np.ndarray,
    upper_a: np.ndarray,
    mean_b: np.ndarray,
    lower_b: np.ndarray,
    upper_b: np.ndarray,
    labels: Sequence[str],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Posterior means of run B against run A, one point per parameter, with interval error bars and ``y = x``.

    Args:
        mean_a: run A's posterior means (x axis), one per parameter.
        lower_a: lower ends of A's intervals (horizontal error bars).
        upper_a: upper ends of A's intervals.
        mean_b: run B's posterior means (y axis).
        lower_b: lower ends of B's intervals (vertical error bars).
        upper_b: upper ends of B's intervals.
        labels: axis labels ``(A, B)``.
        path: PNG to write.
        title: figure title.
    """
    mean_a, lower_a, upper_a, mean_b, lower_b, upper_b = (
        np.ravel(np.asarray(v, dtype=np.float64)) for v in (mean_a, lower_a, upper_a, mean_b, lower_b, upper_b))
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    xerr = np.stack([mean_a - lower_a, upper_a - mean_a]).clip(min=0.0)
    yerr = np.stack([mean_b - lower_b, upper_b - mean_b]).clip(min=0.0)
    ax.errorbar(mean_a, mean_b, xerr=xerr, yerr=yerr, fmt="o", ms=3, lw=0.6, alpha=0.7, capsize=0)
    ends = np.concatenate([lower_a, upper_a, lower_b, upper_b])
    ends = ends[np.isfinite(ends)]
    lo, hi = (float(ends.min()), float(ends.max())) if ends.size else (-1.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=0.8, label="y = x")
    ax.set_xlabel(str(labels[0]))
    ax.set_ylabel(str(labels[1]))
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_grouped_bars(
    groups: Sequence[str],
    series: Sequence[str],
    means: np.ndarray,
    errors: np.ndarray,
    path: Path,
    *,
    ylabels: Sequence[str],
    title: str = "",
) -> Path:
    """Grouped bar charts with error bars: one panel per metric, one group of bars per group, one bar per series.

    Args:
        groups: group names along the x axis (e.g. envs).
        series: bar names within a group (e.g. methods), shown in the legend.
        means: bar heights ``(metric, group, series)``; NaN bars are left out.
        errors: error-bar half-lengths (e.g. standard errors), same shape; NaN draws no bar.
        path: PNG to write.
        ylabels: y-axis label per metric panel.
        title: figure title.
    """
    means = np.asarray(means, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if means.shape != (len(ylabels), len(groups), len(series)) or errors.shape != means.shape:
        raise ValueError(f"means/errors must have shape {(len(ylabels), len(groups), len(series))}, "
                         f"got {means.shape} / {errors.shape}")
    fig, axes = plt.subplots(1, len(ylabels), figsize=(1.2 + 1.6 * len(groups) * len(ylabels), 3.8), squeeze=False)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for ax, label, m, e in zip(axes[0], ylabels, means, errors, strict=True):
        for j, name in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * width, m[:, j], width, yerr=np.nan_to_num(e[:, j]),
                   capsize=3, label=name)
        ax.set_xticks(x, list(groups))
        ax.set_ylabel(label)
        ax.axhline(0.0, color="k", lw=0.6)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path, title)
