"""Every registered feedback type gives the same log-likelihood, and the same gradients, in torch and in JAX.

DESIGN §3: a likelihood is written once against the array API and must agree across backends in float64 to
1e-6 (the contract's tolerance; in practice both backends differ only in the order of float64 operations,
~1e-13). The data are simulated by each type's own teacher on a small grid; the reward/Q arrays and the
nuisance values (z drawn from each Nuisance's prior, transformed by each backend) are shared.

JAX runs in float64 for this module only: the fixture below switches x64 on and restores the previous setting,
so nothing here leaks into other tests (torch's default dtype is never touched; all arrays are explicit).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import xarray as xr
from array_api_compat import array_namespace

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import (
    FeedbackType,
    Latents,
    Nuisance,
    TabularTeacher,
    VariableSpec,
    register,
    registered,
    unregister,
)
from mavrl_ppl.feedback.base import batch_from_dataset

TOL = 1e-6  # DESIGN §3, float64 on both sides
ITEMS = 6  # per type (demonstrations: episodes)


@pytest.fixture(scope="module", autouse=True)
def jax_x64():
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def teacher():
    return TabularTeacher(make_tabular("grid_trap", size=5))


def to_torch(values) -> torch.Tensor:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return torch.as_tensor(values, dtype=torch.float64)
    return torch.as_tensor(values)


def to_jax(values):
    values = np.asarray(values)
    return jnp.asarray(values, dtype=jnp.float64) if values.dtype.kind == "f" else jnp.asarray(values)


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())  # a fixed seed per type, whatever the registration order


# -- a user-defined type, registered from outside the package like a user would ------------------------------


def _score_log_likelihood(batch, latents, params):
    """A noisy numeric score of one segment: score ~ Normal(gain * mean valid reward + mean best Q, noise)."""
    xp = array_namespace(latents.reward)
    valid = batch["valid"]
    count = xp.sum(xp.astype(valid, latents.reward.dtype), axis=-1)
    reward = xp.where(valid, latents.reward, xp.zeros_like(latents.reward))
    best = xp.where(valid, xp.max(latents.q, axis=-1), xp.zeros_like(latents.reward))
    mean = (xp.sum(reward, axis=-1) + xp.sum(best, axis=-1)) / xp.maximum(count, xp.ones_like(count))
    noise = params["noise"]
    z = (batch["score"] - params["gain"][..., 0] * mean) / noise
    return -0.5 * z**2 - xp.log(noise) - 0.5 * np.log(2 * np.pi)


def _score_simulate(teacher, count, rng, *, segment_length: int = 7):
    segments = teacher.segments((count,), segment_length, rng)
    valid = segments["valid"].copy()
    valid[::2, segment_length - 2 :] = False  # some padding
    segments["valid"] = valid
    truth = np.where(valid, teacher.reward(segments), 0.0).sum(-1) / valid.sum(-1)
    score = truth + 0.3 * rng.normal(size=count)
    dims = {2: ("item", "step"), 3: ("item", "step", "obs_dim")}
    data_vars = {k: (dims[v.ndim], v) for k, v in segments.items()}
    data_vars["score"] = (("item",), score)
    return xr.Dataset(data_vars, attrs={**teacher.attrs, "noise": 0.3})


def _softplus(z):
    xp = array_namespace(z)
    return xp.logaddexp(xp.zeros_like(z), z)


USER_TYPE = FeedbackType(
    name="test_conformance_score",
    label="score",
    segment_dims=("item", "step"),
    variables={"score": VariableSpec(("item",), "float")},
    needs=frozenset({"reward", "q"}),
    nuisance=(
        Nuisance("gain", loc=lambda attrs: np.zeros(1), scale=0.5, transform=_softplus),
        Nuisance("noise", loc=lambda attrs: np.zeros(()), scale=0.5, transform=_softplus, fixed_attr="noise"),
    ),
    log_likelihood=_score_log_likelihood,
    simulate=_score_simulate,
)


@pytest.fixture
def user_type():
    register(USER_TYPE)
    try:
        yield USER_TYPE
    finally:
        unregister(USER_TYPE.name)


# -- the comparison ------------------------------------------------------------------------------------------


def simulate(ft: FeedbackType, teacher) -> xr.Dataset:
    return ft.simulate(teacher, ITEMS, np.random.default_rng(seed_of(ft.name)))


def shared_inputs(ft: FeedbackType, dataset: xr.Dataset, fixed: bool):
    """Latent arrays and unconstrained nuisance draws (numpy float64), and the data set attributes to use:
    with ``fixed`` the data set's own (fixed nuisances come from them), else without the fixing attributes."""
    rng = np.random.default_rng(seed_of(ft.name) + 1)
    shape = dataset["valid"].shape
    latents = {}
    if "reward" in ft.needs:
        latents["reward"] = rng.normal(size=shape)
    if "q" in ft.needs:
        latents["q"] = rng.normal(size=(*shape, int(dataset.attrs["num_actions"])))
    fixing = {n.fixed_attr for n in ft.nuisance if n.fixed_attr}
    attrs = dict(dataset.attrs) if fixed else {k: v for k, v in dataset.attrs.items() if k not in fixing}
    z = {}
    for n in ft.free_nuisance(attrs):
        loc = np.asarray(n.loc(attrs), dtype=np.float64)
        z[ft.site(n)] = loc + n.scale * rng.normal(size=loc.shape)
    return latents, z, attrs


def make_loss(ft: FeedbackType, batch, attrs, to_array, weights):
    """``(latents, z) -> (weighted sum of log-likelihoods, per-item values)``, in ``to_array``'s backend."""
    by_site = {ft.site(n): n for n in ft.nuisance}

    def loss(latents, z):
        sampled = {site: by_site[site].transform(value) for site, value in z.items()}
        params = ft.params(attrs, sampled, to_array)
        ll = ft.log_likelihood(batch, Latents(**latents), params)
        return (ll * weights).sum(), ll

    return loss


def compare(ft: FeedbackType, dataset: xr.Dataset, fixed: bool) -> None:
    latents_np, z_np, attrs = shared_inputs(ft, dataset, fixed)
    # Random positive weights per item, so a gradient bug in one item cannot hide in the sum.
    weights_np = np.random.default_rng(seed_of(ft.name) + 2).uniform(0.5, 1.5, size=dataset.sizes["item"])

    batch_t = batch_from_dataset(ft, dataset, to_torch)
    latents_t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in latents_np.items()}
    z_t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in z_np.items()}
    loss_t = make_loss(ft, batch_t, attrs, to_torch, to_torch(weights_np))
    total_t, ll_t = loss_t(latents_t, z_t)
    grads_t = torch.autograd.grad(total_t, [*latents_t.values(), *z_t.values()])
    grads_t = dict(zip([*latents_t, *z_t], (g.numpy() for g in grads_t), strict=True))

    batch_j = batch_from_dataset(ft, dataset, to_jax)
    latents_j = {k: to_jax(v) for k, v in latents_np.items()}
    z_j = {k: to_jax(v) for k, v in z_np.items()}
    loss_j = make_loss(ft, batch_j, attrs, to_jax, to_jax(weights_np))
    ll_j = loss_j(latents_j, z_j)[1]
    grads_j = jax.grad(lambda lat, z: loss_j(lat, z)[0], argnums=(0, 1))(latents_j, z_j)
    grads_j = {**grads_j[0], **grads_j[1]}
    ll_jit = jax.jit(lambda lat, z: loss_j(lat, z)[1])(latents_j, z_j)
    grads_jit = jax.jit(jax.grad(lambda lat, z: loss_j(lat, z)[0], argnums=(0, 1)))(latents_j, z_j)
    grads_jit = {**grads_jit[0], **grads_jit[1]}

    ll_t = ll_t.detach().numpy()
    assert ll_t.shape == (dataset.sizes["item"],)
    assert ll_t.dtype == np.float64 and np.asarray(ll_j).dtype == np.float64
    assert np.isfinite(ll_t).all()
    np.testing.assert_allclose(np.asarray(ll_j), ll_t, rtol=TOL, atol=TOL, err_msg=f"{ft.name}: values")
    np.testing.assert_allclose(np.asarray(ll_jit), ll_t, rtol=TOL, atol=TOL, err_msg=f"{ft.name}: jit values")
    for name, grad in grads_t.items():
        assert np.isfinite(grad).all(), f"{ft.name}: torch gradient w.r.t. {name}"
        assert np.abs(grad).sum() > 0, f"{ft.name}: no gradient w.r.t. {name}"
        np.testing.assert_allclose(
            np.asarray(grads_j[name]), grad, rtol=TOL, atol=TOL, err_msg=f"{ft.name}: gradient w.r.t. {name}"
        )
        np.testing.assert_allclose(
            np.asarray(grads_jit[name]), grad, rtol=TOL, atol=TOL, err_msg=f"{ft.name}: jit gradient w.r.t. {name}"
        )


AT_COLLECTION = sorted(registered())  # the built-in four, plus any type registered by an imported plugin


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-nuisance", "free-nuisance"])
@pytest.mark.parametrize("name", AT_COLLECTION)
def test_registered_type_agrees_across_backends(name, fixed, teacher):
    ft = registered()[name]
    compare(ft, simulate(ft, teacher), fixed)


def test_stop_with_a_lapse_agrees_across_backends(teacher):
    ft = registered()["stop"]
    dataset = ft.simulate(teacher, ITEMS, np.random.default_rng(seed_of("stop")), lapse=0.05)
    assert dataset.attrs["lapse"] == 0.05
    compare(ft, dataset, fixed=True)


def test_every_type_registered_now_agrees_across_backends(user_type, teacher):
    """Iterates the registry at run time: types registered by users (one defined in this module, plus any
    that a test registered since collection) are held to the same contract as the built-in ones."""
    types = registered()
    assert user_type.name in types
    for ft in (ft for name, ft in types.items() if name not in AT_COLLECTION):
        dataset = simulate(ft, teacher)
        for fixed in (True, False):
            compare(ft, dataset, fixed)


# -- padded steps in JAX -------------------------------------------------------------------------------------

BUILT_IN = ["demo", "pref", "rating", "stop"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_padded_garbage_is_inert_in_jax(name, teacher):
    """NaN/inf on padded steps change neither the JAX value nor its gradient (JAX's differentiation rules for
    max and where differ from torch's, so the torch test in test_likelihoods.py does not cover this)."""
    ft = registered()[name]
    dataset = simulate(ft, teacher)
    valid = dataset["valid"].values.copy()
    valid[1::2, ..., -3:] = False  # every other item loses its last three steps (both sides of a pair)
    dataset["valid"].values[...] = valid
    if ft.name == "stop":  # a stop may not sit on a padded step: those items become censored
        tau = dataset["stop_time"].values
        on_padding = (tau >= 0) & ~valid[np.arange(len(tau)), np.clip(tau, 0, None)]
        dataset["stop_time"].values[on_padding] = -1
    assert (~valid).any()
    latents_np, z_np, attrs = shared_inputs(ft, dataset, fixed=False)
    weights = to_jax(np.ones(dataset.sizes["item"]))
    loss = make_loss(ft, batch_from_dataset(ft, dataset, to_jax), attrs, to_jax, weights)
    value_and_grad = jax.value_and_grad(lambda lat, z: loss(lat, z)[0], argnums=0)
    z = {k: to_jax(v) for k, v in z_np.items()}
    clean_value, clean_grads = value_and_grad({k: to_jax(v) for k, v in latents_np.items()}, z)
    junk = np.array([np.nan, np.inf, -np.inf, 1e300])
    dirty = {}
    for key, values in latents_np.items():
        mask = valid if values.shape == valid.shape else valid[..., None]
        filler = junk[np.arange(values.size).reshape(values.shape) % junk.size]
        dirty[key] = to_jax(np.where(mask, values, filler))
    # Eager and compiled: XLA may simplify a 0 * NaN away under jit that eager evaluation keeps (seen with max).
    for mode, fn in [("eager", value_and_grad), ("jit", jax.jit(value_and_grad))]:
        value, grads = fn(dirty, z)
        np.testing.assert_allclose(float(value), float(clean_value), rtol=1e-12, atol=1e-12, err_msg=mode)
        for key in latents_np:
            got, expected = np.asarray(grads[key]), np.asarray(clean_grads[key])
            assert np.isfinite(got).all(), f"{name} ({mode}): padded garbage reached the gradient of {key}"
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=mode)
