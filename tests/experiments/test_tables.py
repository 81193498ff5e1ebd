"""The table builder: cells from tiny studies, re-evaluated independently on fresh seeds."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
import xarray as xr

from mavrl_ppl.analysis.metrics import evaluate_reward
from mavrl_ppl.envs.grids import make_tabular
from mavrl_ppl.experiments import sweep, tables
from mavrl_ppl.experiments.budget import ALL_SUBSETS
from mavrl_ppl.feedback import TabularTeacher
from mavrl_ppl.feedback.data import simulate_feedback
from mavrl_ppl.feedback.teachers import one_hot_features
from mavrl_ppl.inference.svi import SVISettings, fit_svi, posterior_draws

TINY = ["--env", "chain", "--max-steps", "10", "--eval-every", "5", "--seeds", "1", "--quiet"]


def independent_score(params: dict, base: dict, counts: dict, seed: int) -> float:
    """The normalised score of a fit with ``params`` on seed ``seed``, through the public fitting API only."""
    mdp = make_tabular("chain")
    feedback = simulate_feedback(TabularTeacher(mdp), counts, np.random.default_rng(seed))
    settings = SVISettings(**{**base, **params, "progress_bar": False})
    result = fit_svi(feedback, settings, seed=seed, mdp=mdp)
    reward, _, _ = posterior_draws(result.model, one_hot_features(mdp.num_states), settings.num_posterior_samples,
                                   torch.Generator().manual_seed(seed))
    return evaluate_reward(mdp, mdp.with_group_rewards(reward.mean(axis=(0, 1))))["normalized_score"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tables") / "studies.journal")
    for subset in ("pref", "rating_stop"):
        assert sweep.main([*TINY, "--subset", subset, "--storage", path, "--trials", "2"]) == 0
    assert sweep.main([*TINY, "--subset", "stop", "--mode", "budget", "--storage", path, "--trials", "1"]) == 0
    assert sweep.main([*TINY, "--subset", "demo", "--objective", "score", "--storage", path, "--trials", "1"]) == 0
    # a study of the demo cell with no finished trial
    spec = sweep.spec_from_args(sweep.build_parser().parse_args([*TINY, "--subset", "demo"]))
    empty = optuna.create_study(storage=sweep.open_storage(path), study_name="empty")
    empty.set_user_attr("spec", spec.to_json())
    return path


def test_fixed_table_cells_equal_an_independent_reevaluation(storage, tmp_path):
    out = tmp_path / "fixed"
    assert tables.main(["--storage", storage, "--kind", "fixed", "--seeds", "2", "--first-seed", "100", "--out",
                        str(out), "--quiet"]) == 0
    ds = xr.load_dataset(out / "table.nc", engine="h5netcdf")
    assert list(ds.env.values) == ["chain"] and list(ds.subset.values) == list(ALL_SUBSETS)
    assert list(ds.seed.values) == [100, 101]
    filled = {str(s) for s in ds.subset.values if ds.study.sel(env="chain", subset=s).item()}
    assert filled == {"pref", "rating_stop", "demo"}  # the score-objective study is left out by default
    assert ds.study.sel(env="chain", subset="demo").item() == "empty"
    study = optuna.load_study(study_name="fixed-chain-rating_stop", storage=sweep.open_storage(storage))
    best = study.best_trial
    assert best.value == min(t.value for t in study.trials)
    base = sweep.CellSpec.from_json(study.user_attrs["spec"]).base_settings
    expected = [independent_score(best.params, base, {"rating": 64, "stop": 256}, s) for s in (100, 101)]
    cell = ds.sel(env="chain", subset="rating_stop")
    np.testing.assert_allclose(cell.score.values, expected, rtol=1e-9)
    assert cell.score_mean.item() == pytest.approx(np.mean(expected))
    assert cell.score_se.item() == pytest.approx(np.std(expected, ddof=1) / math.sqrt(2))
    assert cell.best_value.item() == pytest.approx(best.value) and cell.trials.item() == 2
    assert not cell.failed.values.any()
    markdown = (out / "table.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| chain |")).split("|")[2:-1]
    assert [c.strip() for c in row] == [
        f"{ds.score_mean.sel(env='chain', subset='pref').item():.1f} ± "
        f"{ds.score_se.sel(env='chain', subset='pref').item():.1f}", "no trials", "—", "—", "—", "—", "—", "—",
        "—", f"{np.mean(expected):.1f} ± {np.std(expected, ddof=1) / math.sqrt(2):.1f}", "—"]
    assert "held-out feedback set (no ground truth)" in markdown and "†" not in markdown
    tex = (out / "table.tex").read_text()
    assert r"\begin{tabular}{lrrrrrrrrrrr}" in tex and r"$\pm$" in tex and "rating+stop" in tex


def test_score_objective_is_flagged_in_the_caption(storage, tmp_path):
    cells, rows, caption = tables.build_table(storage, "fixed", objective="score", seeds=[100], progress=False)
    assert rows == ["chain"] and cells[("chain", "demo")].study == "fixed-chain-demo-score"
    assert cells[("chain", "demo")].text().endswith("†")
    assert "ground truth, simulation only" in caption and "† selected on the true-reward score" in caption


def test_budget_table_uses_the_best_trials_allocation(storage):
    cells, rows, _ = tables.build_table(storage, "budget", seeds=[100], progress=False)
    assert rows == ["chain"]
    assert [s for s in ALL_SUBSETS if cells[("chain", s)].study] == ["stop"]
    assert cells[("chain", "stop")].counts == {"stop": 64}


def test_cell_text_keeps_failures():
    cell = tables.Cell("grid_trap", "pref", study="x", objective="nll", best_trial=0,
                       scores=[50.0, 70.0, math.nan], epics=[0.1, 0.2, math.nan], errors=[None, None, "boom"])
    assert cell.text() == "60.0 ± 10.0 (1/3 failed)"
    cell.errors = ["a", "b", "c"]
    assert cell.text() == "failed (3/3)"
    assert tables.Cell("grid_trap", "pref").text() == "—"
