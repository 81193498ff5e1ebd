"""The compiled model functions equal NumPyro's own (eager) potential, deterministic sites and log-likelihoods."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.baselines.mcmc import enable_x64, make_model
from mavrl_ppl.baselines.mcmc.potential import model_functions, real_latent_shapes, uniform_starts
from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, simulate_feedback

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
jnp = jax.numpy
dist = numpyro.distributions
from numpyro.handlers import seed, trace  # noqa: E402
from numpyro.infer.util import constrain_fn, potential_energy  # noqa: E402
from numpyro.infer.util import log_likelihood as numpyro_log_likelihood  # noqa: E402


@pytest.fixture(autouse=True)
def x64():
    enable_x64()


@pytest.fixture(scope="module")
def small():
    enable_x64()
    mdp = make_tabular("grid_trap", size=4, p_rand=0.1)
    feedback = simulate_feedback(
        TabularTeacher(mdp), {"pref": 12, "demo": 1, "rating": 12, "stop": 16}, np.random.default_rng(0)
    )
    feedback["pref"] = feedback["pref"].copy()
    del feedback["pref"].attrs["beta"]  # an inferred nuisance parameter with a deterministic site (pref_beta)
    model, inputs = make_model(mdp, feedback)
    return model, inputs


def random_points(shapes, count, seed):
    rng = np.random.default_rng(seed)
    return [{k: jnp.asarray(rng.normal(size=s.shape)) for k, s in shapes.items()} for _ in range(count)]


def numpyro_latent_names(model, inputs) -> set[str]:
    """The model's latent sample sites by NumPyro's own trace, traced abstractly (no op-by-op run of the planner)."""
    names: set[str] = set()

    def record():
        sites = trace(seed(model, 0)).get_trace(inputs)
        names.update(n for n, site in sites.items() if site["type"] == "sample" and not site["is_observed"])
        return jnp.zeros(())

    jax.eval_shape(record)
    return names


def test_potential_deterministic_sites_and_log_likelihoods_equal_numpyros(small):
    model, inputs = small
    functions = model_functions(model, inputs)
    latent = {"reward", "rating_cutpoints_z", "pref_beta_z"}
    assert set(functions.shapes) == numpyro_latent_names(model, inputs) == latent
    # NumPyro's own functions, jitted: `initialize_model` runs the model op by op, which took 14 s and 670 MB of
    # compiled primitives on this 4x4 grid. Two compilations of independently traced programs agree to round-off.
    numpyro_potential = jax.jit(lambda z: potential_energy(model, (inputs,), {}, z))
    points = random_points(functions.shapes, 3, seed=1)
    for point in points:
        np.testing.assert_allclose(float(functions.potential(point)), float(numpyro_potential(point)), rtol=1e-12)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *points)
    deterministic = functions.deterministic(stacked)
    expected = jax.jit(jax.vmap(lambda z: constrain_fn(model, (inputs,), {}, z, return_deterministic=True)))(stacked)
    assert set(deterministic) == {"rating_cutpoints", "pref_beta"}
    for site, value in deterministic.items():
        np.testing.assert_allclose(np.asarray(value), np.asarray(expected[site]), rtol=1e-12)
    ours = functions.log_likelihood(stacked)
    theirs = jax.jit(lambda z: numpyro_log_likelihood(model, z, inputs))(stacked)
    assert set(ours) == set(theirs) == {"obs_pref", "obs_demo", "obs_rating", "obs_stop"}
    for site, value in ours.items():
        assert value.shape == theirs[site].shape
        np.testing.assert_allclose(np.asarray(value), np.asarray(theirs[site]), rtol=1e-10, atol=1e-12)


def test_a_constrained_latent_site_is_refused():
    def model():
        numpyro.sample("scale", dist.HalfNormal(1.0))
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    with pytest.raises(ValueError, match="scale"):
        real_latent_shapes(model)


def test_uniform_starts_cover_the_box_with_one_row_per_chain():
    shapes = {"a": jax.ShapeDtypeStruct((3,), jnp.float64), "b": jax.ShapeDtypeStruct((), jnp.float64)}
    starts = uniform_starts(shapes, 2000, jax.random.PRNGKey(0))
    assert starts["a"].shape == (2000, 3) and starts["b"].shape == (2000,)
    values = np.concatenate([np.asarray(starts["a"]).ravel(), np.asarray(starts["b"])])
    assert values.min() >= -2.0 and values.max() <= 2.0
    # 8000 uniform(-2, 2) draws: the mean's standard error is (4 / sqrt(12)) / sqrt(8000) = 0.013; 0.05 is ~4 SE.
    assert abs(values.mean()) < 0.05
    again = uniform_starts(shapes, 2000, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again["a"]), np.asarray(starts["a"]))
