"""Plots people look at: reward maps (true / posterior mean / posterior sd) and the SVI loss curve."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.image

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

#: Grids up to this many rows and columns get each cell's value written in it.
ANNOTATE_MAX_CELLS = 10

#: A positive loss whose largest value is at least this many times its smallest is drawn on a log axis.
LOG_SCALE_RATIO = 30.0

_MINUS = "\N{MINUS SIGN}"
_SD_TITLE = re.compile(r"\b(sd|std|standard deviation)\b", re.IGNORECASE)


#: Resolution of every PNG written here (pixels per inch).
DPI = 110

#: zlib level of the run plots' PNGs: 3 encodes them in ~60 % of the time of PIL's default 6, for 2-8 % more bytes.
PNG_COMPRESS_LEVEL = 3


def _figure(figsize: tuple[float, float], **kwargs) -> Figure:
    """A figure drawn by Agg at :data:`DPI`, outside pyplot's figure manager (nothing to register or close)."""
    fig = Figure(figsize=figsize, dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, suptitle: str = "") -> Path:
    """Lay out, write ``path`` as PNG and close the figure (every plot here ends so)."""
    if suptitle:
        fig.suptitle(suptitle)
    if fig.get_layout_engine() is None:  # constrained-layout figures lay themselves out when drawn
        fig.tight_layout()
    if fig.dpi == DPI and isinstance(fig.canvas, FigureCanvasAgg):
        # What savefig writes, drawn once: savefig draws a laid-out figure twice (first with rendering switched off,
        # only to run the layout engine), and the text-heavy maps spend most of their time drawing.
        fig.canvas.draw()
        matplotlib.image.imsave(path, fig.canvas.buffer_rgba(), format="png", dpi=DPI,
                                pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    else:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _cell_text_colour(rgba: Sequence[float]) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell colour)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def _value_format(values: np.ndarray) -> str:
    """Whole numbers without decimals (a true reward map reads "-4", not "-4.00"), else 2, 1 or 0 decimals by size."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or np.all(finite == np.round(finite)):
        return "{:.0f}"
    largest = float(np.abs(finite).max())
    return "{:.2f}" if largest < 10 else "{:.1f}" if largest < 100 else "{:.0f}"


def scale_groups(names: Sequence[str]) -> list[str]:
    """The colour-scale group of each reward-map panel by its title: ``"sd"`` for spreads (a title naming ``sd``,
    ``std`` or ``standard deviation``), ``"reward"`` for everything else (true reward, posterior means)."""
    return ["sd" if _SD_TITLE.search(name) else "reward" for name in names]


def plot_reward_maps(
    grid_shape: tuple[int, int],
    panels: Sequence[tuple[str, np.ndarray]],
    path: Path,
    *,
    title: str = "",
    scales: Sequence[str] | None = None,
    start: int | None = None,
    goals: Sequence[int] = (),
    annotate: bool | None = None,
) -> Path:
    """Heat maps of per-state values on a grid (row 0 at the top), cells labelled by (row, column).

    Panels in the same colour-scale group share one normalisation and one colour bar (labelled with the group), so
    the true reward and the posterior means are read off the same scale (viridis); spreads (sd) get their own (blues,
    from 0). Up to three panels sit in one row; more are laid out one row per scale group.

    Args:
        grid_shape: ``(rows, cols)``; state ``s`` is cell ``(s // cols, s % cols)``.
        panels: ``(title, values of shape (rows * cols,))`` for each map.
        path: PNG to write.
        title: figure title.
        scales: the colour-scale group of each panel (panels with equal names share a scale); by default
            :func:`scale_groups` of the titles.
        start: the start state, outlined and marked "S" on every panel.
        goals: goal states, outlined and marked "G" on every panel.
        annotate: write each cell's value in it; by default when the grid is at most
            :data:`ANNOTATE_MAX_CELLS` x :data:`ANNOTATE_MAX_CELLS`.
    """
    rows, cols = (int(n) for n in grid_shape)
    names = [str(name) for name, _ in panels]
    maps = [np.asarray(values, dtype=np.float64).reshape(rows, cols) for _, values in panels]
    scales = list(scale_groups(names) if scales is None else scales)
    if len(scales) != len(panels):
        raise ValueError(f"scales has {len(scales)} entries for {len(panels)} panels")
    if annotate is None:
        annotate = max(rows, cols) <= ANNOTATE_MAX_CELLS
    groups = list(dict.fromkeys(scales))  # in order of first appearance
    # Places: one row if it fits, else a row per scale group.
    if len(panels) <= 3:
        places = [(0, i) for i in range(len(panels))]
    else:
        seen = {g: 0 for g in groups}
        places = []
        for group in scales:
            places.append((groups.index(group), seen[group]))
            seen[group] += 1
    nrows = 1 + max(r for r, _ in places)
    ncols = 1 + max(c for _, c in places)
    aspect = rows / cols
    panel_w = 3.9 if max(rows, cols) > 5 else 3.2
    size = (0.6 + 1.25 * panel_w * ncols, 0.9 + (panel_w * min(aspect, 1.5) + 0.5) * nrows)
    fig = _figure(size, layout="compressed")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.get_layout_engine().set(h_pad=0.12, w_pad=0.08)  # inches: air between a row's labels and the next titles
    fontsize = min(9.0, 60.0 / max(rows, cols))
    every_cell = max(rows, cols) <= 20  # a tick per cell; bigger grids get a few integer ticks
    group_axes: dict[str, list] = {g: [] for g in groups}
    norms: dict[str, object] = {}
    for group in groups:
        members = [m for m, g in zip(maps, scales, strict=True) if g == group]
        finite = np.concatenate([m[np.isfinite(m)] for m in members])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if group == "sd" and lo >= 0:
            lo = 0.0
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        norms[group] = Normalize(vmin=lo, vmax=hi)
    cmaps = {g: ("Blues" if g == "sd" else "viridis") for g in groups}
    for (name, values, group, (r, c)) in zip(names, maps, scales, places, strict=True):
        ax = axes[r][c]
        norm = norms[group]
        image = ax.imshow(values, cmap=cmaps[group], norm=norm, interpolation="nearest")
        group_axes[group].append((ax, image))
        ax.set_title(name)
        if every_cell:  # the first and last ticks for the layout (see the end), every cell's tick once laid out
            ax.set_xticks(sorted({0, cols - 1}))
            ax.set_yticks(sorted({0, rows - 1}))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=min(8.0, fontsize + 1), length=2)
        for spine in ax.spines.values():  # the tick labels reach further out: the layout need not measure them
            spine.set_in_layout(False)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        if annotate:
            fmt = _value_format(values)
            colours = image.get_cmap()(norm(values))  # each cell's colour, at once (per cell it is costly)
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    text = fmt.format(v)
                    text = text.lstrip("-") if float(text) == 0 else text  # no "-0.00"
                    ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                            color=_cell_text_colour(colours[i, j]), in_layout=False)
        for states, letter, colour in (([] if start is None else [start], "S", "tab:red"), (goals, "G", "tab:red")):
            for s in states:
                i, j = divmod(int(s), cols)
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, ec=colour, lw=2.0))
                ax.text(j - 0.4, i - 0.4, letter, ha="left", va="top", fontsize=fontsize + 1, color=colour,
                        fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2, foreground="white")],
                        in_layout=False)
    for r in range(nrows):
        for c in range(ncols):
            if (r, c) not in places:
                axes[r][c].axis("off")  # an empty slot (kept in the layout so the columns line up)
    for row, (group, members) in enumerate(group_axes.items()):
        label = "posterior sd" if group == "sd" else group
        # A row per group: the bar at the row's right end (beside any empty slot) so the columns stay aligned.
        beside = [ax for ax, _ in members] if nrows == 1 else list(axes[row])
        fig.colorbar(members[0][1], ax=beside, shrink=0.85, label=label)
    notes = []
    if start is not None:
        notes.append("S = start")
    if len(goals):
        notes.append("G = goal")
    if notes:
        fig.supxlabel(", ".join(notes) + " (red outline)", fontsize=9)
    if title:
        fig.suptitle(title)
    # Lay out now, with only the first and last of the per-cell ticks: they bound the tick labels (whole numbers, the
    # widest last), so the layout is the one every tick gives at a fraction of the cost (the engine measures every
    # tick label of every axis several times). Then every cell's tick, drawn without a second layout.
    fig.get_layout_engine().execute(fig)
    fig.set_layout_engine("none")
    if every_cell:
        for ax, _ in (member for members in group_axes.values() for member in members):
            ax.set_xticks(range(cols))
            ax.set_yticks(range(rows))
    return _save(fig, path)


def _loss_axis(ax: plt.Axes, values: np.ndarray) -> None:
    """Log y axis with plain-number ticks (1-2-5 per decade or sparser) when positive values span at least
    :data:`LOG_SCALE_RATIO`; a linear axis otherwise (a loss that moves within a factor of a few reads best so)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() <= 0 or finite.max() / finite.min() < LOG_SCALE_RATIO:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=7))
        return
    ax.set_yscale("log")
    decades = np.log10(finite.max() / finite.min())
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4.5 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_loss_curve(elbo: Sequence[float], validation: Sequence[float], validation_step: Sequence[int],
                    best_step: int, path: Path, *, title: str = "") -> Path:
    """SVI training loss (negative ELBO per step, with its running mean) and the held-out negative log predictive per
    item at each validation pass, both with the kept step marked (the latest pass within two paired standard errors
    of the held-out minimum, :class:`~mavrl_ppl.inference.training.Best`).

    Args:
        elbo: the loss (negative ELBO, nats) of each step's minibatch.
        validation: the held-out negative log predictive per item (nats) at each validation pass.
        validation_step: the step of each validation pass.
        best_step: the step whose state was kept.
        path: PNG to write.
        title: figure title; by default the run length and the kept step.
    """
    elbo = np.asarray(elbo, dtype=np.float64)
    validation = np.asarray(validation, dtype=np.float64)
    validation_step = np.asarray(validation_step)
    steps = np.arange(1, len(elbo) + 1)
    fig = _figure((11.5, 4.2), layout="constrained")
    ax_train, ax_val = fig.subplots(1, 2)
    kept = {"color": "tab:red", "ls": "--", "lw": 1.0}
    ax_train.plot(steps, elbo, lw=0.6, alpha=0.45, color="tab:blue", label="each step")
    window = max(1, len(elbo) // 25)
    if window > 1:
        running = np.convolve(elbo, np.ones(window) / window, mode="valid")
        ax_train.plot(steps[window - 1:], running, lw=1.6, color="tab:blue",
                      label=f"running mean over {window} steps")
    if len(elbo):
        ax_train.axvline(best_step, **kept, label=f"kept: step {best_step}")
    _loss_axis(ax_train, elbo)
    ax_train.set_xlabel("step")
    ax_train.set_ylabel(f"{_MINUS}ELBO of the step's minibatch (nats)")
    ax_train.set_title(f"training loss ({_MINUS}ELBO)")
    ax_train.legend(fontsize=8).set_in_layout(False)  # inside the axes: nothing for the layout to make room for

    ax_val.plot(validation_step, validation, marker="o", ms=3.5, color="tab:green", label="held-out items")
    ax_val.axvline(best_step, **kept)
    at_best = np.flatnonzero(validation_step == best_step)
    if at_best.size:
        v = float(validation[at_best[0]])
        ax_val.plot([best_step], [v], ls="", marker="*", ms=13, color="tab:red",
                    label=f"kept: step {best_step} ({v:.3f} nats)")
    else:
        ax_val.plot([], [], **kept, label=f"kept: step {best_step}")
    _loss_axis(ax_val, validation)
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("negative log predictive per item (nats)")
    ax_val.set_title("held-out validation loss (kept: latest within 2 SE of the lowest)")
    ax_val.legend(fontsize=8).set_in_layout(False)
    for ax in (ax_train, ax_val):
        ax.grid(True, which="major", alpha=0.3)
        for spine in ax.spines.values():  # the tick labels reach further out: the layout need not measure them
            spine.set_in_layout(False)
        ax.set_xlim(0, max(len(elbo), int(validation_step.max()) if validation_step.size else 0, 1) + 1)
    title = title or f"SVI loss: {len(elbo)} steps, state kept from step {best_step}"
    return _save(fig, path, title)


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
    panel_titles: Sequence[str] | None = None,
    stacked: bool = False,
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
        panel_titles: a title per panel (``None``: none).
        stacked: panels one above the other (many groups per panel) instead of side by side.
    """
    means = np.asarray(means, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if means.shape != (len(ylabels), len(groups), len(series)) or errors.shape != means.shape:
        raise ValueError(f"means/errors must have shape {(len(ylabels), len(groups), len(series))}, "
                         f"got {means.shape} / {errors.shape}")
    if stacked:
        width_in = max(7.5, 2.6 + 1.3 * len(groups))  # room for the titles and the legend right of the panels
        fig, axes = plt.subplots(len(ylabels), 1, figsize=(width_in, 0.6 + 3.2 * len(ylabels)), squeeze=False)
        axes = axes.T
    else:
        fig, axes = plt.subplots(1, len(ylabels), figsize=(1.2 + 1.6 * len(groups) * len(ylabels), 3.8),
                                 squeeze=False)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (ax, label, m, e) in enumerate(zip(axes[0], ylabels, means, errors, strict=True)):
        for j, name in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * width, m[:, j], width, yerr=np.nan_to_num(e[:, j]),
                   capsize=3, label=name)
        ax.set_xticks(x, list(groups))
        ax.set_ylabel(label)
        ax.axhline(0.0, color="k", lw=0.6)
        if panel_titles is not None:
            ax.set_title(panel_titles[i])
    if stacked:  # beside the first panel, clear of its bars
        axes[0][0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes[0][0].legend(fontsize=8)
    return _save(fig, path, title)
