"""The run plots read at a glance: shared colour scales, grid coordinates, labelled axes, the kept step marked."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from mavrl_ppl.analysis import plots


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plot functions save (they close it afterwards; the objects stay readable)."""
    saved = []
    original = plots._save

    def keep(fig, path, suptitle=""):
        saved.append(fig)
        return original(fig, path, suptitle)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def map_axes(fig):
    """The heat-map axes (those holding an image) and the colour-bar axes of a figure."""
    maps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    return maps, bars


def tick_texts(labels):
    return [t.get_text().replace("\N{MINUS SIGN}", "-") for t in labels]


def paper_panels(rows=10, cols=10, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.zeros(rows * cols)
    truth[[s for s in (22, 23, 32, 33) if s < rows * cols - 1] or [rows * cols // 2]] = -4.0  # traps
    truth[-1] = 1.0
    mean = rng.normal(scale=0.5, size=rows * cols)
    sd = rng.uniform(0.1, 0.7, size=rows * cols)
    return [("true reward", truth), ("posterior mean", mean), ("posterior sd", sd)]


def test_truth_and_mean_share_one_colour_scale_and_the_sd_has_its_own(tmp_path, figures):
    panels = paper_panels()
    path = plots.plot_reward_maps((10, 10), panels, tmp_path / "maps.png", title="SVI on grid_trap")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    maps, bars = map_axes(fig)
    assert [ax.get_title() for ax in maps] == ["true reward", "posterior mean", "posterior sd"]
    truth, mean, sd = (ax.images[0] for ax in maps)
    assert truth.norm is mean.norm and truth.get_clim() == mean.get_clim()
    both = np.concatenate([panels[0][1], panels[1][1]])
    assert truth.get_clim() == (pytest.approx(both.min()), pytest.approx(both.max()))
    assert sd.norm is not truth.norm and sd.get_clim() == (0.0, pytest.approx(panels[2][1].max()))
    assert len(bars) == 2  # one colour bar per scale
    assert sorted(bar.get_ylabel() for bar in bars) == ["posterior sd", "reward"]
    assert fig.get_suptitle() == "SVI on grid_trap"


def test_cells_are_labelled_by_row_and_column(tmp_path, figures):
    plots.plot_reward_maps((3, 5), paper_panels(3, 5), tmp_path / "maps.png")
    maps, _ = map_axes(figures[0])
    for ax in maps:
        assert list(ax.get_xticks()) == list(range(5)) and list(ax.get_yticks()) == list(range(3))
        assert tick_texts(ax.get_xticklabels()) == ["0", "1", "2", "3", "4"]
        assert tick_texts(ax.get_yticklabels()) == ["0", "1", "2"]
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("column", "row")
        assert ax.get_ylim()[0] > ax.get_ylim()[1]  # row 0 at the top


def test_small_grids_show_cell_values_and_large_ones_do_not(tmp_path, figures):
    plots.plot_reward_maps((10, 10), paper_panels(), tmp_path / "small.png")
    truth_ax, mean_ax, _ = map_axes(figures[0])[0]
    truth_texts = [t.get_text() for t in truth_ax.texts]
    assert len(truth_texts) == 100
    assert truth_texts[22] == "-4" and truth_texts[99] == "1" and truth_texts[0] == "0"  # whole numbers as such
    assert all(re.fullmatch(r"-?\d+\.\d\d", t.get_text()) for t in mean_ax.texts)
    plots.plot_reward_maps((12, 12), paper_panels(12, 12), tmp_path / "large.png")
    assert not any(ax.texts for ax in map_axes(figures[1])[0])


def test_start_and_goal_cells_are_marked(tmp_path, figures):
    plots.plot_reward_maps((4, 4), paper_panels(4, 4), tmp_path / "maps.png", start=0, goals=(15,))
    for ax in map_axes(figures[0])[0]:
        boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
        centres = sorted((p.get_x() + p.get_width() / 2, p.get_y() + p.get_height() / 2) for p in boxes)
        assert centres == [pytest.approx((0.0, 0.0)), pytest.approx((3.0, 3.0))]  # (col, row) of states 0 and 15
        letters = {t.get_text() for t in ax.texts}
        assert {"S", "G"} <= letters


def test_many_panels_go_one_row_per_scale(tmp_path, figures):
    truth, mean, sd = (v for _, v in paper_panels(3, 3))
    panels = [("true reward", truth), ("A mean", mean), ("B mean", mean + 1), ("A sd", sd), ("B sd", 2 * sd)]
    plots.plot_reward_maps((3, 3), panels, tmp_path / "compare.png")
    maps, bars = map_axes(figures[0])
    assert len(maps) == 5 and len(bars) == 2
    by_title = {ax.get_title(): ax for ax in maps}
    clims = {name: ax.images[0].get_clim() for name, ax in by_title.items()}
    assert clims["true reward"] == clims["A mean"] == clims["B mean"] == (pytest.approx(-4.0), pytest.approx(
        max(mean.max() + 1, 1.0)))
    assert clims["A sd"] == clims["B sd"] == (0.0, pytest.approx(2 * sd.max()))
    top = {round(by_title[n].get_position().y0, 3) for n in ("true reward", "A mean", "B mean")}
    bottom = {round(by_title[n].get_position().y0, 3) for n in ("A sd", "B sd")}
    assert len(top) == 1 and len(bottom) == 1 and top != bottom


def test_scale_groups_by_title():
    assert plots.scale_groups(["true reward", "posterior mean", "posterior sd", "A std", "sd of B", "mean"]) == [
        "reward", "reward", "sd", "sd", "sd", "reward"]


def visible_tick_labels(ax):
    """The y tick labels drawn inside the axis range (the figure has been drawn by ``savefig``)."""
    lo, hi = sorted(ax.get_ylim())
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]


def loss_history(seed=0, steps=200, start=1200.0, end=420.0):
    rng = np.random.default_rng(seed)
    elbo = end + (start - end) * np.exp(-np.arange(steps) / 20) + rng.gamma(2.0, 30.0, size=steps)
    validation_step = np.arange(20, steps + 1, 20)
    validation = 1.36 + 0.3 * np.exp(-validation_step / 60) + rng.uniform(0, 0.05, size=validation_step.size)
    return elbo, validation, validation_step


def test_loss_curve_has_titles_labels_with_units_and_the_kept_step(tmp_path, figures):
    elbo, validation, validation_step = loss_history()
    best = int(validation_step[np.argmin(validation)])
    plots.plot_loss_curve(elbo, validation, validation_step, best, tmp_path / "loss.png")
    (fig,) = figures
    train, val = fig.axes
    assert fig.get_suptitle() and train.get_title() and val.get_title()
    for ax in (train, val):
        assert ax.get_xlabel() == "step" and "(nats)" in ax.get_ylabel()
        assert f"kept: step {best}" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "ELBO" in train.get_ylabel() and "per item" in val.get_ylabel()
    # A loss within a factor of ~3 reads on a linear axis with several labelled ticks.
    assert train.get_yscale() == "linear" and len(visible_tick_labels(train)) >= 4
    assert len(visible_tick_labels(val)) >= 4


def test_a_loss_spanning_decades_gets_a_log_axis_with_several_labels(tmp_path, figures):
    elbo, validation, validation_step = loss_history(start=2e5, end=400.0)
    plots.plot_loss_curve(elbo, validation, validation_step, 100, tmp_path / "loss.png")
    train = figures[0].axes[0]
    assert train.get_yscale() == "log"
    labels = visible_tick_labels(train)
    assert len(labels) >= 4 and all(re.fullmatch(r"[\d.e+]+", t) for t in labels)  # plain numbers, not only 10^k


def test_the_first_and_last_ticks_bound_every_tick_label(tmp_path, figures):
    # plot_reward_maps lays out with only these two ticks per grid axis: the extent must be that of every tick.
    plots.plot_reward_maps((12, 12), paper_panels(12, 12), tmp_path / "maps.png", title="SVI", start=0, goals=(143,))
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    for ax in map_axes(fig)[0]:
        assert list(ax.get_xticks()) == list(range(12)) and list(ax.get_yticks()) == list(range(12))
        every = [axis.get_tightbbox(renderer).bounds for axis in (ax.xaxis, ax.yaxis)]
        ax.set_xticks([0, 11])
        ax.set_yticks([0, 11])
        assert [axis.get_tightbbox(renderer).bounds for axis in (ax.xaxis, ax.yaxis)] == [
            pytest.approx(b) for b in every]


def test_the_png_is_what_savefig_writes(tmp_path, monkeypatch):
    # _save draws a figure once and writes the pixels itself; savefig (which lays out and draws twice) is the reference.
    import matplotlib.image

    elbo, validation, validation_step = loss_history()
    fast = plots.plot_loss_curve(elbo, validation, validation_step, 100, tmp_path / "fast.png")

    def with_savefig(fig, path, suptitle=""):
        fig.suptitle(suptitle)
        fig.savefig(path, dpi=plots.DPI)
        return path

    monkeypatch.setattr(plots, "_save", with_savefig)
    reference = plots.plot_loss_curve(elbo, validation, validation_step, 100, tmp_path / "reference.png")
    pixels = matplotlib.image.imread(fast)
    assert pixels.shape[:2] == (round(4.2 * plots.DPI), round(11.5 * plots.DPI))
    np.testing.assert_array_equal(pixels, matplotlib.image.imread(reference))
