"""The three ``Q*`` backends (numpy ``q_star``, torch ``ExactPlanner``, JAX ``make_q_star``) compute the same function
of the group rewards, and torch and JAX the same gradient, on the paper grids and on a random stochastic MDP.

Agreement alone would miss a mistake that all three share, so every ``Q*`` is also checked against the Bellman
optimality equation written out here, and the gradients against finite differences of the numpy ``Q*``; and a
wrong discount or transposed dynamics is shown to move ``Q*`` by far more than the tolerances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.planning import q_star, value_iteration
from mavrl_ppl.planning.jax_backend import make_q_star
from mavrl_ppl.planning.torch_backend import ExactPlanner

Q_TOL = 1e-9  # max |difference| of Q* between backends
GRAD_TOL = 1e-7  # max |difference| of the gradient between torch and JAX
DRAWS = 4

#: The paper grids (10x10, gamma 0.95, deterministic: JAX evaluates by pointer doubling), one with random moves (dense
#: linear solve), and a random MDP.
CASES = ["grid_sparse", "grid_cliff", "grid_trap", "grid_trap_p0.1", "random"]


def problem(case: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``(transitions, reward_groups, gamma)`` of a case."""
    if case == "random":
        # 7 states, 3 actions, Dirichlet rows (two of them deterministic), one reward group per (s, a, s').
        rng = np.random.default_rng(11)
        transitions = rng.dirichlet(np.full(7, 0.7), size=(7, 3))
        transitions[0, 1] = np.eye(7)[4]
        transitions[5, 2] = np.eye(7)[5]
        return transitions, np.arange(transitions.size).reshape(transitions.shape), 0.9
    name, _, p_rand = case.partition("_p")
    mdp = make_tabular(name, p_rand=float(p_rand or 0.0))
    assert mdp.num_states == 100 and mdp.gamma == 0.95
    return mdp.transitions, mdp.reward_groups, mdp.gamma


def group_draws(groups: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(DRAWS, int(groups.max()) + 1))


def bellman_residual(transitions: np.ndarray, groups: np.ndarray, gamma: float, theta: np.ndarray, q: np.ndarray):
    """``max |Q - (r + gamma P max_a Q)|``, the optimality equation written out on the full ``(S, A, S)`` arrays."""
    target = np.einsum("sat,sat->sa", transitions, theta[groups] + gamma * q.max(-1)[None, None, :])
    return float(np.abs(q - target).max())


def torch_q(transitions, groups, gamma, thetas) -> np.ndarray:
    planner = ExactPlanner(transitions, groups, gamma)  # one planner for all draws: each call warm-starts
    with torch.no_grad():
        return np.stack([planner(torch.as_tensor(theta)).numpy() for theta in thetas])


def jax_q(transitions, groups, gamma, thetas) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(make_q_star(transitions, groups, gamma)))(jnp.asarray(thetas)))


@pytest.mark.parametrize("case", CASES)
def test_q_star_agrees_across_backends(case, x64):
    transitions, groups, gamma = problem(case)
    thetas = group_draws(groups, seed=0)
    q_np = q_star(transitions, groups, gamma, thetas)
    q_torch = torch_q(transitions, groups, gamma, thetas)
    q_jax = jax_q(transitions, groups, gamma, thetas)
    assert q_np.shape == q_torch.shape == q_jax.shape == (DRAWS, *transitions.shape[:2])
    assert q_np.dtype == q_torch.dtype == q_jax.dtype == np.float64
    assert np.abs(q_torch - q_np).max() <= Q_TOL
    assert np.abs(q_jax - q_np).max() <= Q_TOL
    assert np.abs(q_jax - q_torch).max() <= Q_TOL
    # All three solve the optimality equation itself (so they do not just share a mistake).
    for theta, q in zip(thetas, q_np, strict=True):
        assert bellman_residual(transitions, groups, gamma, theta, q) <= Q_TOL


@pytest.mark.parametrize("case", ["grid_trap", "random"])
def test_the_tolerance_sees_a_wrong_discount_or_transposed_dynamics(case):
    transitions, groups, gamma = problem(case)
    thetas = group_draws(groups, seed=0)
    q = q_star(transitions, groups, gamma, thetas)
    wrong_gamma = q_star(transitions, groups, gamma - 0.01, thetas)
    assert np.abs(wrong_gamma - q).max() > 1e-2
    # P[s', a, s] in place of P[s, a, s'] (rows renormalised so that it is still an MDP).
    transposed = transitions.transpose(2, 1, 0) + 1e-12
    transposed /= transposed.sum(-1, keepdims=True)
    assert np.abs(q_star(transposed, groups, gamma, thetas) - q).max() > 1e-2
    for theta, q_one in zip(thetas, q, strict=True):
        assert bellman_residual(transposed, groups, gamma, theta, q_one) > 1e-2


@pytest.mark.parametrize("case", ["grid_cliff", "random"])
def test_value_iteration_converges_to_the_exact_q_star(case):
    transitions, groups, gamma = problem(case)
    thetas = group_draws(groups, seed=1)
    exact = q_star(transitions, groups, gamma, thetas)
    # value_iteration stops within tol of the fixed point; the rest is round-off.
    iterated = value_iteration(transitions, thetas[:, groups], gamma, tol=1e-12)
    assert np.abs(iterated - exact).max() <= 1e-11
    loose = value_iteration(transitions, thetas[:, groups], gamma, tol=1e-4)
    assert np.abs(loose - exact).max() <= 1e-4


def readout_weights(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed weights ``W (S, A)`` and the states whose action log-partition enters the read-out."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape), np.arange(0, shape[0], 3)


def readout_np(q: np.ndarray, weights: np.ndarray, states: np.ndarray) -> np.ndarray:
    """``sum(W * Q) + sum_s logsumexp_a Q[s, a]`` over the chosen states (a nonlinear read-out, as the likelihoods
    are), for ``Q`` with leading batch dimensions."""
    picked = q[..., states, :]
    top = picked.max(-1, keepdims=True)
    lse = (top + np.log(np.exp(picked - top).sum(-1, keepdims=True)))[..., 0]
    return (weights * q).sum((-2, -1)) + lse.sum(-1)


@pytest.mark.parametrize("case", CASES)
def test_gradients_agree_across_backends_and_with_finite_differences(case, x64):
    transitions, groups, gamma = problem(case)
    thetas = group_draws(groups, seed=2)
    weights, states = readout_weights(transitions.shape[:2], seed=3)

    planner = ExactPlanner(transitions, groups, gamma)
    w_torch, s_torch = torch.as_tensor(weights), torch.as_tensor(states)
    q_fn = make_q_star(transitions, groups, gamma)
    w_jax, s_jax = jnp.asarray(weights), jnp.asarray(states)
    jax_grad = jax.jit(
        jax.grad(lambda t: jnp.sum(w_jax * q_fn(t)) + jnp.sum(jax.nn.logsumexp(q_fn(t)[s_jax], axis=-1)))
    )

    eps = 1e-6
    num_groups = thetas.shape[-1]
    for theta in thetas[:2]:
        t = torch.tensor(theta, requires_grad=True)
        q = planner(t)
        (torch.sum(w_torch * q) + torch.logsumexp(q[s_torch], dim=-1).sum()).backward()
        grad_torch = t.grad.numpy()
        grad_jax = np.asarray(jax_grad(jnp.asarray(theta)))
        assert np.abs(grad_torch - grad_jax).max() <= GRAD_TOL
        assert np.abs(grad_torch).max() > 1.0  # a real gradient, not an all-zero pair
        # Central differences of the numpy Q*, all 2 G shifted rewards in one batched call. Q* is piecewise linear,
        # so they are exact up to round-off (~1e-13 |f| / eps) and the read-out's curvature (~eps^2) unless a step
        # crosses a policy switch, which N(0, 1) rewards and eps = 1e-6 do not.
        shifts = eps * np.eye(num_groups)
        shifted = q_star(transitions, groups, gamma, np.concatenate([theta + shifts, theta - shifts]))
        f = readout_np(shifted, weights, states)
        fd = (f[:num_groups] - f[num_groups:]) / (2 * eps)
        assert np.abs(fd - grad_torch).max() <= 1e-5 * max(1.0, np.abs(fd).max())
