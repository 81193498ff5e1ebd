"""The ``log_likelihood`` and ``posterior_predictive`` groups (DESIGN §6): the generic predictive of every type,
agreement with the NUTS model's JAX log-likelihood, a user's type, and both back ends' ``posterior.nc`` in ArviZ."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import arviz as az
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from scipy.stats import binom

from mavrl_ppl.analysis import predictive
from mavrl_ppl.analysis.posterior import build_inference_data
from mavrl_ppl.analysis.predictive import evaluate_feedback, label_space
from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import (
    FeedbackType,
    TabularTeacher,
    VariableSpec,
    get_feedback_type,
    masked_mean,
    register,
    simulate_feedback,
    unregister,
)

matplotlib.use("Agg")

TYPES = ("pref", "demo", "rating", "stop")


def candidate_log_probs(mdp, name, dataset, reward, nuisance):
    """``(K, draw, unit)`` log-probabilities of every candidate label (and the label space), each computed by setting
    every unit's label to the candidate: a check of the label spaces and of the likelihoods' normalisation that does
    not reuse the sampler's own sums."""
    ft = get_feedback_type(name)
    space = label_space(ft, dataset)
    assert not isinstance(space, str), space
    units = predictive._one_step_items(dataset) if space.per_step else dataset
    out = []
    for value in space.values:
        trial = units.assign({ft.label: (units[ft.label].dims, np.broadcast_to(value, units[ft.label].shape).copy())})
        ll = evaluate_feedback(mdp, reward, ("state",), nuisance, {name: trial}, seed=0, predictive=False)
        out.append(ll.log_likelihood[name].reshape(-1, ll.log_likelihood[name].shape[-1]))
    logp = np.where(space.allowed[:, None, :], np.stack(out), -np.inf)
    return logp, space


@pytest.mark.parametrize("name", TYPES)
def test_probabilities_over_every_label_sum_to_one(problem, name):
    mdp, feedback, reward, nuisance = problem
    logp, space = candidate_log_probs(mdp, name, feedback[name], reward, nuisance)
    expected_sizes = {"pref": 2, "demo": mdp.num_actions, "rating": 5, "stop": feedback["stop"].sizes["step"] + 1}
    assert len(space.values) == expected_sizes[name]
    active = space.allowed.any(axis=0)
    total = np.exp(logp).sum(axis=0)[:, active]
    # 1e-7: the stop hazard's floor (1e-8 per step, 10 steps) is the only departure from an exact sum
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-7)
    if name == "stop":  # a stop on a padded step is impossible
        valid = feedback["stop"]["valid"].values
        for k, tau in enumerate(space.values):
            if tau >= 0:
                np.testing.assert_array_equal(space.allowed[k], valid[:, tau])


@pytest.mark.parametrize("name", TYPES)
def test_predictive_draws_follow_the_label_probabilities(problem, name):
    mdp, feedback, reward, nuisance = problem
    # One posterior draw repeated N times: each item's N predictive labels are then i.i.d. from its categorical.
    n = 4000
    one_reward = np.broadcast_to(reward[:1, :1], (1, n, reward.shape[-1]))
    one_nuisance = {k: np.broadcast_to(v[:1, :1], (1, n, *v.shape[2:])) for k, v in nuisance.items()}
    logp, space = candidate_log_probs(mdp, name, feedback[name], reward[:1, :1], {k: v[:1, :1] for k, v in
                                                                                    nuisance.items()})
    probs = np.exp(logp[:, 0, :])  # (K, unit)
    drawn = evaluate_feedback(mdp, one_reward, ("state",), one_nuisance, {name: feedback[name]},
                              seed=5).posterior_predictive[name][0]
    drawn = drawn.reshape(n, probs.shape[1], *space.values.shape[1:])
    matches = np.stack([np.all((drawn == v).reshape(n, probs.shape[1], -1), axis=-1) for v in space.values])
    counts = matches.sum(axis=1)  # (K, unit)
    active = space.allowed.any(axis=0)
    assert np.all(matches.sum(axis=0)[:, active] == 1)  # every drawn label is a candidate
    # Each cell's count is Binomial(n, p): an exact two-sided binomial test per cell (a normal approximation is wrong
    # for the many cells with p ~ 1e-5). Every p-value above 1e-6: with at most ~200 cells the chance that a correct
    # sampler fails is < 2e-4 (Bonferroni), and the fixed seed makes the test one deterministic draw of it; a wrong
    # category (an off-by-one label, unnormalised probabilities) moves counts by hundreds of standard errors.
    p_value = np.minimum(1.0, 2 * np.minimum(binom.sf(counts - 1, n, probs), binom.cdf(counts, n, probs)))
    assert p_value[:, active].min() > 1e-6
    if space.per_step:  # padded steps keep their observed value
        padded = ~feedback[name]["valid"].values
        observed = feedback[name][get_feedback_type(name).label].values
        assert np.all(drawn.reshape(n, *observed.shape)[:, padded] == observed[padded])


@pytest.mark.parametrize("name", ["pref", "stop"])
def test_a_likelihood_that_cannot_take_a_candidate_axis_is_called_once_per_candidate(problem, name):
    """The candidates are batched into one likelihood call only where that reproduces one call per candidate; a user's
    likelihood that refuses (or mishandles) the extra label axis gets the per-candidate calls and the same numbers."""
    mdp, feedback, reward, nuisance = problem
    builtin = get_feedback_type(name)

    def one_label_per_item(batch, latents, params):
        if batch[builtin.label].ndim != feedback[name][builtin.label].ndim:
            raise ValueError("one label per item")
        return builtin.log_likelihood(batch, latents, params)

    narrow = dataclasses.replace(builtin, name=f"test_narrow_{name}", log_likelihood=one_label_per_item)
    register(narrow)
    try:
        sites = {f"{narrow.name}_{k.split('_', 1)[1]}": v for k, v in nuisance.items() if k.startswith(name)}
        theirs = evaluate_feedback(mdp, reward, ("state",), sites, {narrow.name: feedback[name]}, seed=0,
                                   label_log_probs=True)
    finally:
        unregister(narrow.name)
    ours = evaluate_feedback(mdp, reward, ("state",), nuisance, {name: feedback[name]}, seed=0, label_log_probs=True)
    assert theirs.skipped == {} == ours.skipped
    np.testing.assert_allclose(theirs.log_likelihood[narrow.name], ours.log_likelihood[name], rtol=0, atol=1e-12)
    np.testing.assert_allclose(theirs.label_log_probs[narrow.name], ours.label_log_probs[name], rtol=0, atol=1e-12)


def test_numpy_log_likelihood_equals_the_nuts_models_jax_log_likelihood(problem):
    pytest.importorskip("numpyro")
    from mavrl_ppl.baselines.mcmc import enable_x64, make_model
    from mavrl_ppl.baselines.mcmc.model import nuisance_sites
    from mavrl_ppl.baselines.mcmc.potential import model_functions

    enable_x64()
    import jax.numpy as jnp

    mdp, feedback, _, _ = problem
    model, inputs = make_model(mdp, feedback)
    functions = model_functions(model, inputs)
    rng = np.random.default_rng(3)
    points = {k: jnp.asarray(rng.normal(size=(30, *s.shape))) for k, s in functions.shapes.items()}
    theirs = functions.log_likelihood(points)
    deterministic = functions.deterministic(points)
    ours = evaluate_feedback(mdp, np.asarray(points["reward"])[None], ("state",),
                             {s: np.asarray(deterministic[s])[None] for s in nuisance_sites(feedback)}, feedback,
                             seed=0, predictive=False).log_likelihood
    assert set(ours) == set(TYPES)
    for name in TYPES:  # measured: <= 4e-12 (demo and stop sum terms of |Q*| up to ~100)
        np.testing.assert_allclose(ours[name][0], np.asarray(theirs[f"obs_{name}"]), rtol=0, atol=1e-8)


def test_chunks_seed_and_layout_do_not_change_the_result(problem, monkeypatch):
    mdp, feedback, reward, nuisance = problem
    whole = evaluate_feedback(mdp, reward, ("state",), nuisance, feedback, seed=2)
    assert whole.skipped == {}
    monkeypatch.setattr(predictive, "ELEMENT_BUDGET", 1000)  # a chunk of 1-3 draws
    chunked = evaluate_feedback(mdp, reward, ("state",), nuisance, feedback, seed=2)
    other_seed = evaluate_feedback(mdp, reward, ("state",), nuisance, feedback, seed=3)
    for name in TYPES:
        # Q*'s batched BLAS calls round differently for another batch size (measured: 2e-15)
        np.testing.assert_allclose(chunked.log_likelihood[name], whole.log_likelihood[name], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(chunked.posterior_predictive[name], whole.posterior_predictive[name])
        assert whole.posterior_predictive[name].shape[:2] == reward.shape[:2]
    assert any(np.any(other_seed.posterior_predictive[n] != whole.posterior_predictive[n]) for n in TYPES)
    # rewards per (state, action) pair that repeat the state's reward score the same
    pairs = np.repeat(reward[..., None], mdp.num_actions, axis=-1)
    by_pair = evaluate_feedback(mdp, pairs, ("state", "action"), nuisance, feedback, seed=2, predictive=False)
    for name in TYPES:
        np.testing.assert_allclose(by_pair.log_likelihood[name], whole.log_likelihood[name], rtol=0, atol=1e-10)


def test_a_user_type_gets_log_likelihood_and_predictive_without_extra_code(plackett_luce):
    mdp = make_tabular("grid_trap", size=4)
    data = simulate_feedback(TabularTeacher(mdp), {"ranking": 10}, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    reward = rng.normal(size=(1, 300, mdp.num_states))
    evaluation = evaluate_feedback(mdp, reward, ("state",), {}, data, seed=0)
    assert evaluation.skipped == {}
    # rankings of 3 segments: 3^3 combinations enumerated, the 6 permutations kept by the type's own check
    space = label_space(get_feedback_type("ranking"), data["ranking"])
    assert space.values.shape == (27, 3) and np.all(space.allowed.sum(axis=0) == 6)
    drawn = evaluation.posterior_predictive["ranking"]
    assert drawn.shape == (1, 300, 10, 3)
    assert np.all(np.sort(drawn, axis=-1) == np.arange(3))
    idata = build_inference_data(reward=reward, reward_dims=("state",), nuisance={}, sample_stats=None,
                                 feedback=data, mdp=mdp, attrs={}, log_likelihood=evaluation.log_likelihood,
                                 posterior_predictive=evaluation.posterior_predictive)
    assert idata.observed_data["ranking"].dims == ("ranking_item", "ranking_slot")
    assert idata.posterior_predictive["ranking"].dims == ("chain", "draw", "ranking_item", "ranking_slot")
    assert idata.log_likelihood["ranking"].dims == ("chain", "draw", "ranking_item")


def _reading_log_likelihood(batch, latents, params):
    u = masked_mean(latents.reward, batch["valid"])
    return -0.5 * (batch["reading"] - u) ** 2 - 0.5 * np.log(2 * np.pi)


def _reading_simulate(teacher, count, rng):
    segments = teacher.segments((count,), 5, rng)
    from mavrl_ppl.feedback import segment_dataset, segment_means

    reading = segment_means(teacher.reward(segments), segments["valid"]) + rng.normal(size=count)
    return segment_dataset(segments, ("item", "step"), {"reading": (("item",), reading)}, teacher.attrs)


def test_a_continuous_label_gets_a_log_likelihood_and_no_predictive_with_the_reason():
    reading = FeedbackType(name="test_reading", label="reading", segment_dims=("item", "step"),
                           variables={"reading": VariableSpec(("item",), "float")}, needs=frozenset({"reward"}),
                           nuisance=(), log_likelihood=_reading_log_likelihood, simulate=_reading_simulate)
    register(reading)
    try:
        mdp = make_tabular("grid_trap", size=4)
        data = simulate_feedback(TabularTeacher(mdp), {"test_reading": 6}, np.random.default_rng(0))
        evaluation = evaluate_feedback(mdp, np.zeros((1, 3, mdp.num_states)), ("state",), {}, data, seed=0)
    finally:
        unregister("test_reading")
    assert evaluation.log_likelihood["test_reading"].shape == (1, 3, 6)
    assert evaluation.posterior_predictive == {}
    assert "do not sum to one" in evaluation.skipped["test_reading"]
    assert "test_reading: " in evaluation.attrs["posterior_predictive_skipped"]


# -- both back ends end to end ---------------------------------------------------------------------------------

TINY = ["--env", "grid_trap", "--env-size", "4", "--feedback", "pref=16,demo=1,rating=16,stop=32", "--quiet"]
BACK_ENDS = {
    "svi": ["--max-steps", "40", "--num-posterior-samples", "100"],
    # prior starts: the mode search took 12 of the run's 33 s of fit (loaded 2-core machine), and nothing here needs it.
    # Sequential chains: split over two devices, each device compiles the sampler for itself (52 s of CPU for the run
    # against 37 s sequential, fresh compilation cache), and the SVI run and the other test worker want the cores.
    "nuts": ["--inference", "nuts", "--num-chains", "2", "--num-warmup", "100", "--num-samples", "100", "--seed", "1",
             "--init", "prior", "--chain-method", "sequential"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Both back ends' runs, started together (two processes on the two cores): ``{name: (run dir, exit status,
    stderr)}``. The NUTS run may end unconverged (exit 1, outputs written); test_nuts_run_* checks that verdict."""
    root = tmp_path_factory.mktemp("predictive")
    procs = {name: subprocess.Popen([sys.executable, "-m", "mavrl_ppl.fit", *TINY, *args, "--out", str(root / name)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in BACK_ENDS.items()}
    out = {}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode in ((0, 1) if name == "nuts" else (0,)), stderr
        out[name] = (root / name, proc.returncode, stderr)
    return out


@pytest.fixture(scope="module")
def runs(finished):
    return {name: az.from_netcdf(str(run / "posterior.nc")) for name, (run, _, _) in finished.items()}


def test_nuts_run_records_its_diagnostics_and_exit_status_follows_the_verdict(finished):
    """The NUTS outputs, the diagnostics in metrics.json, and exit 1 exactly when the run's own verdict is "not
    converged" (2 chains of 100 draws on a 4x4 grid may land either side)."""
    run, status, stderr = finished["nuts"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert status == (0 if metrics["converged"] else 1), stderr
    if not metrics["converged"]:
        assert "error: NUTS did not converge" in stderr
    assert {p.name for p in run.iterdir()} >= {"posterior.nc", "metrics.json", "nuts_trace.png", "nuts_rank.png"}
    idata = az.from_netcdf(str(run / "posterior.nc"))
    assert metrics["mean_steps"] == pytest.approx(float(idata.sample_stats["n_steps"].mean()))
    assert metrics["init_seconds"] == pytest.approx(idata.attrs["init_seconds"])
    assert 0 < metrics["init_seconds"] < metrics["fit_seconds"]
    assert len(metrics["lp_chain_means"]) == 2 and metrics["inference"] == "nuts"
    assert any(Path(os.environ["MAVRL_JAX_CACHE"]).iterdir())  # the compiled sampler was kept for the next run


def _layout(group: xr.Dataset) -> dict[str, tuple[str, ...]]:
    return {name: tuple(var.dims) for name, var in group.data_vars.items()}


def test_both_back_ends_have_the_same_groups_names_and_dims(runs):
    svi, nuts = runs["svi"], runs["nuts"]
    for group in ("posterior", "log_likelihood", "posterior_predictive", "observed_data", "constant_data"):
        assert _layout(svi[group]) == _layout(nuts[group]), group
    assert _layout(svi.log_likelihood) == {t: ("chain", "draw", f"{t}_item") for t in TYPES}
    assert _layout(svi.observed_data) == {"pref": ("pref_item",), "demo": ("demo_item", "demo_step"),
                                          "rating": ("rating_item",), "stop": ("stop_item",)}
    assert _layout(svi.posterior_predictive) == {k: ("chain", "draw", *v) for k, v in
                                                 _layout(svi.observed_data).items()}
    assert _layout(svi.posterior)["rating_cutpoints"] == ("chain", "draw", "cutpoint")
    assert "sample_stats" in nuts.groups() and "elbo" in svi.groups()
    assert svi.posterior_predictive.sizes["draw"] == 100 and nuts.posterior_predictive.sizes["chain"] == 2
    for idata in (svi, nuts):
        assert idata.attrs["predictive_model"] == "exact Q* of every reward draw"
        assert "posterior_predictive_skipped" not in idata.attrs


@pytest.mark.parametrize("back_end", list(BACK_ENDS))
def test_loo_per_type_and_ppc_work(runs, back_end):
    idata = runs[back_end]
    for name in TYPES:
        with warnings.catch_warnings():
            # Pareto-k warnings are what LOO reports about tiny posteriors; one demonstration is one LOO point.
            warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
            warnings.filterwarnings("ignore", message="The point-wise LOO is the same", category=UserWarning)
            loo = az.loo(idata, var_name=name)
        assert np.isfinite(loo.elpd_loo)
        with warnings.catch_warnings():
            # ArviZ 0.23's KDE (float preference labels) calls a matplotlib API that matplotlib 3.11 deprecates.
            warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping",
                                    category=matplotlib.MatplotlibDeprecationWarning)
            axes = az.plot_ppc(idata, var_names=[name], num_pp_samples=20, random_seed=0)
        assert np.size(axes) >= 1
        plt.close("all")


def test_svi_summary_with_stats_emits_no_warning(runs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = az.summary(runs["svi"], kind="stats")
    assert len(summary) == 16 + 4 and summary["sd"].gt(0).all()
