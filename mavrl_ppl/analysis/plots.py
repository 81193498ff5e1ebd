"""Plots people look at: reward maps (true / posterior mean / posterior sd) and the SVI loss curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
