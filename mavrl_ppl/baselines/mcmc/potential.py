"""A NumPyro model as compiled functions of its latent values: potential energy, deterministic sites, per-item
log-likelihoods.

NumPyro's own entry points (``initialize_model``, ``MCMC`` with a ``model``, ``infer.util.log_likelihood``) run the
model eagerly before anything is compiled, and eager JAX compiles every primitive as its own XLA program: on the
10x10 grids that was ~400 compilations and 20-30 s of every NUTS run (``benchmarks/RESULTS.md``, NUTS notes). Here
the model is only ever traced inside ``jax.jit`` (or ``jax.eval_shape``), so each function is one compilation.

The functions need every latent site to be real-valued (``Normal`` and the like): then a site's value IS its
unconstrained value and the potential needs no transforms. The feedback model is built that way (rewards and the
unconstrained ``*_z`` of every nuisance parameter, DESIGN §5); :func:`real_latent_shapes` refuses any other model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer.util import log_density

#: Posterior draws per compiled batch when the per-item log-likelihoods are computed (bounds the memory: one draw of
#: the 10x10 stop data holds 256 x 10 x 5 action values).
LOG_LIKELIHOOD_BATCH = 250


class ModelFunctions(NamedTuple):
    """Compiled functions of a model's latent values ``params`` (site name -> array, as in ``shapes``).

    Attributes:
        potential: ``params -> -log p(params, data)`` (the NUTS potential energy).
        deterministic: ``params -> {site: value}`` of the model's ``numpyro.deterministic`` sites.
        log_likelihood: ``params -> {site: per-item log-likelihood}`` of its observed sites (``numpyro.factor``
            included), for params with ONE leading draw axis; computed in batches of :data:`LOG_LIKELIHOOD_BATCH`.
            (Runs store :mod:`mavrl_ppl.analysis.predictive`'s numpy values; this is the JAX reference they match.)
        shapes: the latent sites' shapes and dtypes.
    """

    potential: Callable[[dict[str, Any]], Any]
    deterministic: Callable[[dict[str, Any]], dict[str, Any]]
    log_likelihood: Callable[[dict[str, Any]], dict[str, Any]]
    shapes: dict[str, jax.ShapeDtypeStruct]


def _trace(model: Callable, args: tuple, params: dict[str, Any] | None = None) -> dict:
    seeded = handlers.seed(model, 0)
    if params is not None:
        seeded = handlers.substitute(seeded, data=params)
    return handlers.trace(seeded).get_trace(*args)


def real_latent_shapes(model: Callable, *args: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the model's latent sample sites, found by abstract tracing (nothing is computed or compiled).

    Raises:
        ValueError: a latent site is not real-valued (its value would not be its unconstrained value).
    """

    def latents():
        sites = _trace(model, args)
        bad = [name for name, site in sites.items() if _is_latent(site) and not _is_real(site["fn"].support)]
        if bad:
            raise ValueError(f"latent sites {bad} are not real-valued; these functions need unconstrained sites")
        return {name: site["value"] for name, site in sites.items() if _is_latent(site)}

    return jax.eval_shape(latents)


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _is_real(support: Any) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def model_functions(model: Callable, *args: Any) -> ModelFunctions:
    """The compiled :class:`ModelFunctions` of ``model(*args)`` (see the module docstring for the requirement)."""
    shapes = real_latent_shapes(model, *args)

    @jax.jit
    def potential(params):
        return -log_density(model, args, {}, params)[0]

    @jax.jit
    def deterministic(params):
        sites = _trace(model, args, params)
        return {name: site["value"] for name, site in sites.items() if site["type"] == "deterministic"}

    def one_draw(params):
        sites = _trace(model, args, params)
        return {
            name: site["fn"].log_prob(site["value"])
            for name, site in sites.items()
            if site["type"] == "sample" and site["is_observed"]
        }

    @jax.jit
    def log_likelihood(params):
        return jax.lax.map(one_draw, params, batch_size=LOG_LIKELIHOOD_BATCH)

    return ModelFunctions(potential, jax.vmap(deterministic), log_likelihood, shapes)


def uniform_starts(shapes: dict[str, jax.ShapeDtypeStruct], num_chains: int, key: Any, radius: float = 2.0) -> dict:
    """NumPyro's default start (``init_to_uniform``): every coordinate uniform on ``(-radius, radius)``, one row per
    chain."""
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, (num_chains, *shape.shape), shape.dtype, -radius, radius)
        for k, (name, shape) in zip(keys, sorted(shapes.items()), strict=True)
    }


def zeros_like_shapes(shapes: dict[str, jax.ShapeDtypeStruct]) -> dict[str, Any]:
    """Zero values of every latent site."""
    return {name: jnp.zeros(shape.shape, shape.dtype) for name, shape in shapes.items()}
