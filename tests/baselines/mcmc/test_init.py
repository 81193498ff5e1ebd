"""Chain starting points: the mode search and the Laplace spread, checked on a model with a closed-form posterior,
and on the feedback model of a small grid."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.baselines.mcmc import NutsSettings, enable_x64, make_model
from mavrl_ppl.baselines.mcmc.init import dispersed_starts
from mavrl_ppl.baselines.mcmc.potential import model_functions, zeros_like_shapes
from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, simulate_feedback

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
jnp = jax.numpy
dist = numpyro.distributions

PRIOR_SD, NOISE_SD = 1.0, 0.5
OBSERVED = np.array([[0.3, -1.2, 2.0], [0.5, -0.8, 1.6]])  # two observations of each of three coordinates


@pytest.fixture(autouse=True)
def x64():
    enable_x64()


def conjugate_model(observed):
    x = numpyro.sample("x", dist.Normal(0.0, PRIOR_SD).expand([3]).to_event(1))
    numpyro.sample("y", dist.Normal(x, NOISE_SD).to_event(1), obs=observed)


def conjugate_posterior():
    precision = 1 / PRIOR_SD**2 + len(OBSERVED) / NOISE_SD**2
    return OBSERVED.sum(0) / NOISE_SD**2 / precision, np.full(3, precision**-0.5)


def test_the_mode_and_spread_of_a_gaussian_posterior_are_its_mean_and_sd():
    mean, sd = conjugate_posterior()
    functions = model_functions(conjugate_model, jnp.asarray(OBSERVED))
    starts = dispersed_starts(functions.potential, functions.shapes, 4, np.random.default_rng(0))
    # Adam on a quadratic with a step decaying to 5e-4 ends within ~1e-5 of the minimum (measured 1e-15).
    np.testing.assert_allclose(np.asarray(starts.mode["x"]), mean, atol=1e-4)
    # The Hessian of a quadratic potential is exact, so the spread is the posterior sd to round-off.
    np.testing.assert_allclose(starts.scale, sd, rtol=1e-9)
    assert starts.init_params["x"].shape == (4, 3)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_starts_are_spread_as_the_approximation_times_scale(scale):
    mean, sd = conjugate_posterior()
    functions = model_functions(conjugate_model, jnp.asarray(OBSERVED))
    starts = dispersed_starts(functions.potential, functions.shapes, 3000, np.random.default_rng(1), scale=scale)
    whitened = (np.asarray(starts.init_params["x"]) - mean) / sd
    # 3000 x 3 standard-normal draws times `scale`: the sample sd is within 3% of `scale` (its relative standard
    # error is 1/sqrt(2 * 9000) = 0.75%), and the sample mean within 0.05 * scale (SE 0.018 * scale).
    np.testing.assert_allclose(whitened.std(0), scale, rtol=0.03)
    np.testing.assert_allclose(whitened.mean(0), 0.0, atol=0.05 * scale)


@pytest.mark.slow  # ~20 s, nearly all XLA compiling two mode searches; every NUTS run in the fast suite uses them
def test_on_the_feedback_model_the_mode_beats_the_prior_mean_and_the_same_rng_gives_the_same_starts():
    mdp = make_tabular("grid_trap", size=4, p_rand=0.1)
    feedback = simulate_feedback(TabularTeacher(mdp), {"pref": 12, "demo": 1, "rating": 12, "stop": 16},
                                 np.random.default_rng(0))
    model, inputs = make_model(mdp, feedback)
    functions = model_functions(model, inputs)
    first = dispersed_starts(functions.potential, functions.shapes, 4, np.random.default_rng(3), mode_steps=500)
    second = dispersed_starts(functions.potential, functions.shapes, 4, np.random.default_rng(3), mode_steps=500)
    for site, value in first.init_params.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(second.init_params[site]))
    at_zero = float(functions.potential(zeros_like_shapes(functions.shapes)))
    assert first.mode_potential < at_zero - 1.0
    rewards = np.asarray(first.init_params["reward"])
    assert rewards.shape == (4, mdp.num_groups)
    assert np.all(rewards.std(0) > 0)  # the chains start apart


@pytest.mark.parametrize("field, value", [("init", "map"), ("init_scale", 0.0)])
def test_bad_init_settings_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        NutsSettings(**{field: value})


def test_dispersed_starts_rejects_bad_arguments():
    functions = model_functions(conjugate_model, jnp.asarray(OBSERVED))
    with pytest.raises(ValueError, match="num_chains"):
        dispersed_starts(functions.potential, functions.shapes, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="scale"):
        dispersed_starts(functions.potential, functions.shapes, 2, np.random.default_rng(0), scale=-1.0)


def two_basins(x):
    """A 1-D potential with a shallow basin at +0.2 (next to zero) and one ~4.6 nats deeper at -1.2."""
    wells = jnp.stack([-((x[0] - 0.2) ** 2) / 0.02, jnp.log(100.0) - (x[0] + 1.2) ** 2 / 0.02])
    return -jax.nn.logsumexp(wells)


def test_the_mode_search_keeps_the_deepest_basin_any_search_reaches():
    shapes = {"x": jax.ShapeDtypeStruct((1,), jnp.float64)}
    potential = lambda params: two_basins(params["x"])  # noqa: E731
    single = dispersed_starts(potential, shapes, 2, np.random.default_rng(0), num_searches=1, mode_steps=500)
    several = dispersed_starts(potential, shapes, 2, np.random.default_rng(0), num_searches=8, mode_steps=500)
    # From zero Adam stays in the shallow basin; of 7 N(0, 1) starts, each falls left of the ridge (~-0.5) with
    # probability ~0.3, so with this rng at least one does (the test fails if the best search is not kept).
    np.testing.assert_allclose(np.asarray(single.mode["x"]), [0.2], atol=0.02)
    np.testing.assert_allclose(np.asarray(several.mode["x"]), [-1.2], atol=0.02)
    assert several.mode_potential == pytest.approx(several.search_potentials.min())
    assert several.search_potentials[0] == pytest.approx(single.mode_potential)
