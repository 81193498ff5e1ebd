"""Diagnostics and plots on synthetic posteriors whose answer is known (no sampling: fast)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mavrl_ppl.baselines.mcmc import nuts_diagnostics, plot_nuts_diagnostics
from mavrl_ppl.envs import make_tabular


def synthetic_idata(shift_chain: float = 0.0, divergent: int = 0, seed: int = 0, lp_shift: float = 0.0):
    from mavrl_ppl.netcdf import arviz

    arviz()  # ArviZ's import-time FutureWarning must not fire inside the test (warnings are errors)
    from mavrl_ppl.analysis.posterior import build_inference_data

    mdp = make_tabular("grid_trap", size=3)
    rng = np.random.default_rng(seed)
    chains, draws = 4, 500
    reward = rng.normal(size=(chains, draws, mdp.num_states))
    reward[0, :, 4] += shift_chain  # one chain off in one parameter
    diverging = np.zeros((chains, draws), dtype=bool)
    diverging.flat[:divergent] = True
    stats = {
        "diverging": diverging,
        "tree_depth": np.full((chains, draws), 3),
        "step_size": np.full((chains, draws), 0.25),
        "energy": rng.normal(size=(chains, draws)),
        # log density of a 9-dim standard normal posterior: -chi2(9)/2 up to a constant; chain 3 off by lp_shift
        "lp": -0.5 * rng.chisquare(9, size=(chains, draws)) + lp_shift * (np.arange(chains) == 3)[:, None],
    }
    return build_inference_data(
        reward=reward,
        reward_dims=("state",),
        nuisance={"rating_cutpoints": np.sort(rng.normal(size=(chains, draws, 4)), axis=-1)},
        sample_stats=stats,
        feedback={},
        mdp=mdp,
        attrs={"inference": "nuts"},
    )


def test_independent_chains_converge():
    d = nuts_diagnostics(synthetic_idata())
    # 4 x 500 independent draws: R-hat within 1.01 and ESS near 2000 (bulk ESS of iid draws fluctuates ~10%).
    assert d["rhat_max"] <= 1.01
    assert d["ess_bulk_min"] > 1400 and d["ess_tail_min"] > 1400
    assert (d["divergences"], d["tree_depth_max"], d["step_size_mean"]) == (0, 3, pytest.approx(0.25))
    assert d["converged"]


def test_a_stuck_chain_or_a_divergence_fails_convergence():
    stuck = nuts_diagnostics(synthetic_idata(shift_chain=1.0))
    assert stuck["rhat_max"] > 1.1 and not stuck["converged"]
    divergent = nuts_diagnostics(synthetic_idata(divergent=1))
    assert divergent["divergences"] == 1 and not divergent["converged"]


def test_a_chain_in_another_basin_fails_convergence_through_its_log_density():
    # Chain 3's log density sits 2 nats (about one within-chain sd, sqrt(9/2)) below the others while every parameter
    # mixes: like grid_cliff seed 3, whose chains differed by ~21 nats. Over 500 draws that split R-hat is ~1.2.
    same = nuts_diagnostics(synthetic_idata())
    assert same["rhat_lp"] <= 1.01 and same["converged"]
    apart = nuts_diagnostics(synthetic_idata(lp_shift=-2.0))
    assert apart["rhat_max"] <= 1.01 and apart["rhat_lp"] > 1.05 and not apart["converged"]
    means = apart["lp_chain_means"]
    # A chain mean of chi2(9)/2 over 500 draws has sd 0.095, so the gap's sd is ~0.11: 0.3 is ~3 sd.
    assert len(means) == 4 and means[3] == pytest.approx(np.mean(means[:3]) - 2.0, abs=0.3)


def test_plots_show_the_worst_rewards(tmp_path):
    from mavrl_ppl.baselines.mcmc.plots import worst_reward_coords

    idata = synthetic_idata(shift_chain=1.0)
    assert 4 in worst_reward_coords(idata, 6)["state"]  # the off-chain parameter is among the worst
    paths = plot_nuts_diagnostics(idata, tmp_path / "plots")
    assert [p.name for p in paths] == ["nuts_trace.png", "nuts_rank.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.fixture
def closed_figures(monkeypatch):
    """Every figure ``plot_nuts_diagnostics`` closes (after saving it), in order: trace, rank."""
    import matplotlib.pyplot as plt

    closed = []
    close = plt.close

    def keep(fig=None):
        closed.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return closed


TITLE = re.compile(r"reward \(row (\d+), col (\d+)\)\nR-hat (\d\.\d{3}), bulk ESS (\d+)")


def test_plot_titles_name_the_grid_cell_with_its_rhat_and_ess(tmp_path, closed_figures):
    from mavrl_ppl.netcdf import arviz

    az = arviz()
    idata = synthetic_idata(shift_chain=1.0)  # state 4 = cell (1, 1) of the 3x3 grid has one chain off
    rhat = az.rhat(idata.posterior, method="rank")
    ess = az.ess(idata.posterior, method="bulk")
    plot_nuts_diagnostics(idata, tmp_path)
    trace, rank = closed_figures
    for fig in (trace, rank):
        assert "grid_trap (3x3 grid): 4 chains x 500 draws, 0 divergences" in fig.get_suptitle()
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        cells = {}
        for title in titles:
            if (m := TITLE.fullmatch(title)) is not None:
                row, col, r, e = int(m[1]), int(m[2]), float(m[3]), int(m[4])
                state = 3 * row + col
                assert r == pytest.approx(float(rhat["reward"].sel(state=state)), abs=5e-4)
                assert e == pytest.approx(float(ess["reward"].sel(state=state)), abs=0.5)
                cells[(row, col)] = r
        assert len(cells) == 6 and (1, 1) in cells and cells[(1, 1)] > 1.1
        assert any(t.startswith("rating_cutpoints[3]\nR-hat ") for t in titles)
        red = [ax.get_title() for ax in fig.axes if ax.title.get_color() == "tab:red"]
        assert red and all(t.startswith("reward (row 1, col 1)") for t in red)  # only R-hat > 1.01 is red


def test_rewards_without_a_grid_and_state_action_rewards_are_labelled(tmp_path, closed_figures):
    from mavrl_ppl.analysis.posterior import build_inference_data
    from mavrl_ppl.baselines.mcmc.plots import grid_shape_of, reward_label

    assert reward_label({"state": 5}, (2, 3)) == "reward (row 1, col 2)"
    assert reward_label({"state": 5}, None) == "reward (state 5)"
    assert reward_label({"state": 0, "action": 2}, (2, 3)) == "reward (row 0, col 0, action 2)"
    assert reward_label({"point": 7}, None) == "reward (point 7)"
    assert grid_shape_of(synthetic_idata()) == (3, 3)

    mdp = make_tabular("grid_trap", size=3)
    rng = np.random.default_rng(1)
    idata = build_inference_data(
        reward=rng.normal(size=(2, 100, mdp.num_states, 2)), reward_dims=("state", "action"), nuisance={},
        sample_stats={"diverging": np.zeros((2, 100), dtype=bool)}, feedback={}, mdp=mdp,
        attrs={"inference": "nuts"})
    plot_nuts_diagnostics(idata, tmp_path, count=3)
    titles = [ax.get_title() for ax in closed_figures[0].axes if ax.get_title()]
    assert len(titles) == 6 and all(re.fullmatch(r"reward \(row \d, col \d, action \d\)\nR-hat \d\.\d{3}, bulk ESS \d+",
                                                 t) for t in titles)
