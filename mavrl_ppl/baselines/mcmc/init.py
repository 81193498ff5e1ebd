"""Starting points for the NUTS chains: dispersed draws around the posterior mode.

NumPyro's default start (every unconstrained coordinate uniform on (-2, 2)) puts chains far out in the 100-dimensional
reward space, where a chain can stay for the whole run: on grid_cliff seeds 1-3 one chain of four never joined the
others (R-hat 1.53, bulk ESS 7; ``benchmarks/RESULTS.md``, NUTS notes). Starting each chain from a draw of a
Laplace-like approximation ``N(mode, (scale^2) H^-1)`` (``H`` the Hessian of the potential at the mode) avoids
that while keeping the starts apart, so R-hat can still see chains that do not mix. The posterior is not changed.

Why ``NutsSettings.init_scale`` is 0.25 and not 1 or more (the usual advice is over-dispersed starts): the stop
likelihood is a log barrier at zero regret, so the reward space is cut into regions that a chain practically cannot
leave, and some hold a negligible share of the posterior. At scale 1, one chain of four on grid_sparse seed 1 started
in such a pocket and stayed there (mean log density 38 nats below the other three chains: a weight of ~e^-38), and
R-hat was 1.53; at 0.25 the four chains agree (R-hat 1.005, bulk ESS 871). The starts are still distinct, so R-hat
still checks the mixing inside the region that holds the mass.

The mode is found by Adam on the potential (a ``lax.scan``, one compiled program): ``Q*`` makes the potential only
piecewise smooth, which stalls quasi-Newton line searches (BFGS stopped after 6 iterations on grid_cliff), while a
decaying-step first-order method does not care. The point need not be the exact mode; it only has to be in the bulk.
Because the stop barrier walls the potential into basins and Adam stays in the one it starts in, there are
``MODE_SEARCHES`` searches (one from zero, the rest from N(0, 1) draws, run together under ``vmap``) and the lowest
potential wins: on grid_cliff seed 3 the search from zero ended at potential 764, random starts at 509-705, and three
of four chains then sampled a basin ~20 nats below the one the fourth found (R-hat 1.53; ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mavrl_ppl.baselines.mcmc.potential import zeros_like_shapes

#: Adam settings of the mode search: the step decays geometrically from ``MODE_LR`` to ``MODE_LR * MODE_LR_FINAL``.
MODE_STEPS = 3000
MODE_LR = 0.05
MODE_LR_FINAL = 0.01

#: Independent Adam searches for the mode (one from zero, the others from N(0, 1) draws); the lowest potential wins.
MODE_SEARCHES = 8

#: Smallest eigenvalue kept in the Hessian: the prior gives every direction curvature >= 1 in the paper's models,
#: this only guards a user model with flatter directions or a non-convex piece.
MIN_CURVATURE = 1e-3


class ChainStarts(NamedTuple):
    """Where the chains start and what the mode search found.

    Attributes:
        init_params: unconstrained site values with a leading chain axis (``MCMC.run(..., init_params=...)``).
        mode: unconstrained site values at the end of the mode search.
        mode_potential: the potential (negative log joint) there.
        scale: the per-coordinate standard deviation of the approximation (square root of the diagonal of
            ``H^-1``), flattened in NumPyro's order; a good first diagonal inverse mass matrix is ``scale**2``.
        search_potentials: the final potential of every search (the first started from zero); ``mode`` is the lowest.
    """

    init_params: dict[str, Any]
    mode: dict[str, Any]
    mode_potential: float
    scale: np.ndarray
    search_potentials: np.ndarray


def _adam(potential: Callable, x0: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """``steps`` Adam updates on ``potential`` from ``x0``; returns the last point and its potential."""
    value_and_grad = jax.value_and_grad(potential)
    decay = MODE_LR_FINAL ** (1.0 / steps)

    def update(carry, i):
        x, m, v = carry
        _, g = value_and_grad(x)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat = m / (1.0 - 0.9 ** (i + 1.0))
        v_hat = v / (1.0 - 0.999 ** (i + 1.0))
        x = x - MODE_LR * decay**i * m_hat / (jnp.sqrt(v_hat) + 1e-8)
        return (x, m, v), None

    zeros = jnp.zeros_like(x0)
    (x, _, _), _ = jax.lax.scan(update, (x0, zeros, zeros), jnp.arange(steps, dtype=x0.dtype))
    return x, potential(x)


def dispersed_starts(
    potential: Callable[[dict[str, Any]], Any],
    shapes: dict[str, jax.ShapeDtypeStruct],
    num_chains: int,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
    mode_steps: int = MODE_STEPS,
    num_searches: int = MODE_SEARCHES,
) -> ChainStarts:
    """One starting point per chain, drawn from ``N(mode, scale^2 H^-1)`` in the unconstrained space.

    Args:
        potential: the potential energy of unconstrained site values (``ModelFunctions.potential``).
        shapes: the sites' shapes (``ModelFunctions.shapes``).
        num_chains: how many starting points.
        rng: source of the searches' random origins and of the chains' draws.
        scale: multiplies the approximation's standard deviations; above 1 spreads the chains wider.
        mode_steps: Adam steps of the mode search.
        num_searches: independent searches (the first from zero, the others from N(0, 1) draws of ``rng``); the
            one that ends at the lowest potential is the mode.

    Returns:
        :class:`ChainStarts`.
    """
    if num_chains < 1:
        raise ValueError(f"num_chains must be positive, got {num_chains}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if num_searches < 1:
        raise ValueError(f"num_searches must be positive, got {num_searches}")
    flat, unravel = ravel_pytree(zeros_like_shapes(shapes))

    def flat_potential(x):
        return potential(unravel(x))

    origins = np.concatenate([np.zeros((1, flat.shape[0])), rng.standard_normal((num_searches - 1, flat.shape[0]))])
    search = jax.jit(jax.vmap(lambda x0: _adam(flat_potential, x0, mode_steps)))
    modes, potentials = search(jnp.asarray(origins, dtype=flat.dtype))
    potentials = np.asarray(potentials)
    best = int(np.argmin(np.where(np.isfinite(potentials), potentials, np.inf)))
    mode, mode_potential = modes[best], potentials[best]
    hessian = np.asarray(jax.jit(jax.hessian(flat_potential))(mode))
    eigenvalues, eigenvectors = np.linalg.eigh((hessian + hessian.T) / 2)
    root_cov = eigenvectors / np.sqrt(np.maximum(eigenvalues, MIN_CURVATURE))  # cov = root_cov @ root_cov.T
    draws = np.asarray(mode)[None] + scale * rng.standard_normal((num_chains, flat.shape[0])) @ root_cov.T
    return ChainStarts(
        init_params=jax.vmap(unravel)(jnp.asarray(draws)),
        mode=unravel(mode),
        mode_potential=float(mode_potential),
        scale=np.sqrt((root_cov**2).sum(-1)),
        search_potentials=potentials,
    )
