"""The NumPyro model: its log density is the prior plus every type's likelihood, with the right latents and nuisance
parameters wired in, for any registered type."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mavrl_ppl.baselines.mcmc import enable_x64, make_model
from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import (
    FeedbackType,
    Latents,
    Nuisance,
    TabularTeacher,
    VariableSpec,
    get_feedback_type,
    register,
    simulate_feedback,
    unregister,
)
from mavrl_ppl.feedback.ops import masked_mean
from mavrl_ppl.planning import value_iteration

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
jnp = jax.numpy
from numpyro import handlers  # noqa: E402
from scipy.stats import norm  # noqa: E402

COUNTS = {"pref": 12, "demo": 1, "rating": 12, "stop": 16}


@pytest.fixture(autouse=True)
def x64():
    enable_x64()


@pytest.fixture(scope="module")
def small():
    mdp = make_tabular("grid_trap", size=4, p_rand=0.1)
    feedback = simulate_feedback(TabularTeacher(mdp), COUNTS, np.random.default_rng(0))
    return mdp, feedback


def trace(model, inputs, values):
    conditioned = handlers.substitute(handlers.seed(model, 0), data=values)
    return handlers.trace(conditioned).get_trace(inputs)


def numpy_log_density(mdp, feedback, theta, z):
    """The joint log density computed independently: numpy Q* and the likelihoods called on numpy arrays."""
    total = norm.logpdf(theta).sum()
    q_star = value_iteration(mdp.transitions, theta[mdp.reward_groups], mdp.gamma, tol=1e-13)
    for name, ds in feedback.items():
        ft = get_feedback_type(name)
        sampled = {}
        for n in ft.free_nuisance(ds.attrs):
            site = ft.site(n)
            total += norm.logpdf(z[site], n.loc(ds.attrs), n.scale).sum()
            sampled[site] = n.transform(z[site])
        batch = {k: ds[k].values for k in ds.data_vars}
        batch.update({a: float(ds.attrs[a]) for a in ft.attrs if a in ds.attrs})
        state = np.where(ds.valid.values, ds.state.values, 0)
        reward = theta[
            mdp.reward_groups[
                state,
                np.where(ds.valid.values, ds.action.values, 0),
                np.where(ds.valid.values, ds.next_state.values, 0),
            ]
        ]
        latents = Latents(reward=reward, q=q_star[state])
        total += ft.log_likelihood(batch, latents, ft.params(ds.attrs, sampled, np.asarray)).sum()
    return total


def test_log_density_is_prior_plus_every_likelihood(small):
    mdp, feedback = small
    model, inputs = make_model(mdp, feedback)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=mdp.num_groups)
    z = {"rating_cutpoints": rng.normal(size=4)}
    tr = trace(model, inputs, {"reward": theta, "rating_cutpoints_z": z["rating_cutpoints"]})
    log_density = sum(
        float(site["fn"].log_prob(site["value"]).sum()) for site in tr.values() if site["type"] == "sample"
    )
    # Same float64 arithmetic up to summation order and Q* (1e-13 apart): 1e-8 absolute on a ~-300 total.
    assert log_density == pytest.approx(numpy_log_density(mdp, feedback, theta, z), abs=1e-8)
    # Per-item factors: one value per item, as the ArviZ log_likelihood group needs.
    for name, ds in feedback.items():
        site = tr[f"obs_{name}"]
        assert site["fn"].log_prob(site["value"]).shape == (ds.sizes["item"],)


def test_fixed_beta_is_a_constant_and_a_dropped_attribute_makes_it_a_site(small):
    mdp, feedback = small
    model, inputs = make_model(mdp, feedback)
    tr = trace(model, inputs, {})
    assert "pref_beta" not in tr and "demo_beta" not in tr  # the simulator fixed both through attrs["beta"]
    assert tr["rating_cutpoints"]["type"] == "deterministic"
    cut = np.asarray(tr["rating_cutpoints"]["value"])
    assert cut.shape == (4,) and np.all(np.diff(cut) > 0)

    free = {**feedback, "pref": feedback["pref"].copy()}
    del free["pref"].attrs["beta"]
    model, inputs = make_model(mdp, free)
    tr = trace(model, inputs, {"pref_beta_z": np.array(np.log(2.0))})
    assert tr["pref_beta_z"]["type"] == "sample"
    assert float(tr["pref_beta"]["value"]) == pytest.approx(2.0)  # beta = exp(z)
    assert "demo_beta" not in tr


def test_feedback_without_tabular_states_is_rejected(small):
    mdp, feedback = small
    with pytest.raises(ValueError, match="lacks 'state'"):
        make_model(mdp, {"pref": feedback["pref"].drop_vars("state")})
    with pytest.raises(KeyError, match="unknown feedback type"):
        make_model(mdp, {"nonsense": feedback["pref"]})
    with pytest.raises(ValueError, match="empty"):
        make_model(mdp, {})


def _scalar_ll(batch, latents, params):
    """A user's type: a noisy reading ``y ~ Normal(mean valid reward, sigma)`` of each segment."""
    u = masked_mean(latents.reward, batch["valid"])
    sigma = params["sigma"]
    return -0.5 * ((batch["reading"] - u) / sigma) ** 2 - 0.5 * np.log(2 * np.pi) - _log(sigma)


def _log(x):
    from array_api_compat import array_namespace

    return array_namespace(x).log(x)


def _exp(z):
    from array_api_compat import array_namespace

    return array_namespace(z).exp(z)


def test_a_type_registered_from_outside_needs_no_model_change(small):
    mdp, feedback = small
    ds = feedback["rating"]
    reading = xr.Dataset(
        {
            **{
                k: ds[k]
                for k in ("obs", "action", "next_obs", "next_action", "valid", "terminal", "state", "next_state")
            },
            "reading": (("item",), np.linspace(-1, 1, ds.sizes["item"])),
        },
        attrs={"gamma": mdp.gamma},
    )
    sigma = Nuisance("sigma", loc=lambda attrs: np.zeros(()), scale=1.0, transform=_exp)
    register(
        FeedbackType(
            name="reading",
            label="reading",
            segment_dims=("item", "step"),
            variables={"reading": VariableSpec(("item",), "float")},
            needs=frozenset({"reward"}),
            nuisance=(sigma,),
            log_likelihood=_scalar_ll,
            simulate=lambda *a, **k: None,
        )
    )
    try:
        model, inputs = make_model(mdp, {"reading": reading, "stop": feedback["stop"]})
        theta = np.random.default_rng(2).normal(size=mdp.num_groups)
        tr = trace(model, inputs, {"reward": theta, "reading_sigma_z": np.array(0.0)})
        assert float(tr["reading_sigma"]["value"]) == pytest.approx(1.0)
        means = (theta[ds.state.values]).mean(-1)  # grids: the reward of a transition is the state left's
        expected = -0.5 * (reading["reading"].values - means) ** 2 - 0.5 * np.log(2 * np.pi)
        site = tr["obs_reading"]
        np.testing.assert_allclose(np.asarray(site["fn"].log_prob(site["value"])), expected, atol=1e-12)
    finally:
        unregister("reading")
